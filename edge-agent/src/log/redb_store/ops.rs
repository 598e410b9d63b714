//! The [`LogStore`] operations of the redb log: appends, reads, retention, compaction,
//! metadata, and the damage they meet.

use redb::ReadableTable;

use super::*;

impl LogStore for RedbLog {
    fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        spec.validate()?;
        let row = self.write(|tx| {
            let mut t = tx.open_table(TOPICS).map_err(storage)?;
            let existing: Option<TopicRow> = match t.get(spec.name.as_str()).map_err(storage)? {
                Some(v) => Some(topic_decode(&spec.name, v.value()).map_err(|e| {
                    LogError::Corrupt(format!(
                        "{e} (run `edge-agent log verify --quarantine` with the agent stopped)"
                    ))
                })?),
                None => None,
            };
            let id = match &existing {
                Some(old) if old.spec.partitions != spec.partitions => {
                    return Err(LogError::InvalidTopic(format!(
                        "{} has {} partitions, not {}",
                        spec.name, old.spec.partitions, spec.partitions
                    )))
                }
                Some(old) => old.id,
                None => {
                    // Past every id in use: by a topic row, or by chunks whose topic row was
                    // quarantined (their records stay where `verify` reports them).
                    let mut max = match tx.open_table(CHUNKS).map_err(storage)?.last().map_err(storage)? {
                        Some((k, _)) => k.value().0 + 1,
                        None => 0,
                    };
                    for e in t.iter().map_err(storage)? {
                        let (k, v) = e.map_err(storage)?;
                        if let Ok(r) = topic_decode(k.value(), v.value()) {
                            max = max.max(r.id + 1);
                        }
                    }
                    max
                }
            };
            let row = TopicRow {
                id,
                spec: spec.clone(),
            };
            t.insert(spec.name.as_str(), topic_encode(&spec.name, &row)?.as_slice())
                .map_err(storage)?;
            Ok(row)
        })?;
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.name.clone(), row);
        Ok(())
    }

    fn topics(&self) -> Result<Vec<TopicSpec>, LogError> {
        let mut v: Vec<TopicSpec> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| r.spec.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn append(&self, append: &Append) -> Result<Vec<u64>, LogError> {
        let ids = append
            .partitions
            .iter()
            .map(|p| self.topic_partition(&p.topic, p.partition).map(|r| r.id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut marks = Vec::with_capacity(append.partitions.len());
        let bases = self.write(|tx| {
            if append.partitions.iter().any(|p| !p.records.is_empty()) {
                self.reserve
                    .check(self.db.path(), tx)
                    .map_err(LogError::Storage)?;
            }
            let mut parts = tx.open_table(PARTS).map_err(storage)?;
            let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
            let mut bases = Vec::with_capacity(append.partitions.len());
            for (p, id) in append.partitions.iter().zip(ids) {
                let mut stats = self.part_for_write(&parts, &chunks, &p.topic, id, p.partition)?;
                let base = stats.next_offset;
                bases.push(base);
                if p.records.is_empty() {
                    continue;
                }
                let bytes = chunk::encode(base, p.records.iter().enumerate().map(|(i, r)| (i as u64, r)));
                if stats.records == 0 {
                    stats.first_offset = base;
                }
                stats.next_offset += p.records.len() as u64;
                stats.records += p.records.len() as u64;
                stats.bytes += bytes.len() as u64;
                chunks
                    .insert((id, p.partition, base), bytes.as_slice())
                    .map_err(storage)?;
                put_part(&mut parts, id, p.partition, &stats)?;
                marks.push((mark_key(id, p.partition), stats.next_offset));
            }
            if !append.streams.is_empty() {
                let mut streams = tx.open_table(STREAMS).map_err(storage)?;
                for s in &append.streams {
                    streams
                        .insert(
                            (s.device.as_str(), s.boot),
                            rows::stream_encode(&s.device, s.boot, s.next_expected).as_slice(),
                        )
                        .map_err(storage)?;
                }
            }
            Ok(bases)
        })?;
        self.raise_marks(marks);
        Ok(bases)
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.read_db(|tx| {
            let Some(chunks) = table_missing_ok(tx.open_table(CHUNKS))? else {
                return Ok(Vec::new());
            };
            let start = chunk_holding(&chunks, id, partition, from)?;
            let mut out = Vec::new();
            let mut value_bytes = 0usize;
            for e in chunks
                .range((id, partition, start)..=(id, partition, u64::MAX))
                .map_err(storage)?
            {
                let (k, v) = e.map_err(storage)?;
                let base = k.value().2;
                let before = out.len();
                chunk::decode(base, v.value(), from, &mut out, max_records)
                    .map_err(|e| self.damaged(&chunk_at(topic, partition, base), e))?;
                value_bytes += out[before..].iter().map(|r| r.value.len()).sum::<usize>();
                if out.len() >= max_records || value_bytes > max_bytes {
                    break;
                }
            }
            Ok(crate::log::cap_bytes(out, max_bytes))
        })
    }

    fn read_with(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        f: &mut dyn FnMut(&crate::log::RecordRef<'_>) -> bool,
    ) -> Result<usize, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        if max_records == 0 {
            return Ok(0);
        }
        self.read_db(|tx| {
            let Some(chunks) = table_missing_ok(tx.open_table(CHUNKS))? else {
                return Ok(0);
            };
            let start = chunk_holding(&chunks, id, partition, from)?;
            let mut n = 0;
            for e in chunks
                .range((id, partition, start)..=(id, partition, u64::MAX))
                .map_err(storage)?
            {
                let (k, v) = e.map_err(storage)?;
                let base = k.value().2;
                let stopped = chunk::visit(base, v.value(), from, &mut |r| {
                    n += 1;
                    f(r) && n < max_records
                })
                .map_err(|e| self.damaged(&chunk_at(topic, partition, base), e))?;
                if stopped || n >= max_records {
                    break;
                }
            }
            Ok(n)
        })
    }

    fn scan_keys(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<u64, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.read_db(|tx| {
            let Some(chunks) = table_missing_ok(tx.open_table(CHUNKS))? else {
                return Ok(0);
            };
            let start = chunk_holding(&chunks, id, partition, from)?;
            let mut n = 0;
            let mut count = |o: u64, k: Option<&[u8]>| {
                n += 1;
                f(o, k)
            };
            for e in chunks
                .range((id, partition, start)..(id, partition, to.max(start)))
                .map_err(storage)?
            {
                let (k, v) = e.map_err(storage)?;
                let base = k.value().2;
                chunk::scan_keys(base, v.value(), from, to, &mut count)
                    .map_err(|e| self.damaged(&chunk_at(topic, partition, base), e))?;
            }
            Ok(n)
        })
    }

    fn partition_stats(&self, topic: &str, partition: u32) -> Result<PartitionStats, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.read_db(|tx| match table_missing_ok(tx.open_table(PARTS))? {
            Some(t) => get_part(&t, id, partition)
                .map_err(|e| self.damaged(&format!("topic {topic:?} partition {partition}"), e)),
            None => Ok(PartitionStats::default()),
        })
    }

    fn stream_state(&self, device: &str, boot: u32) -> Result<Option<u64>, LogError> {
        self.read_db(|tx| match table_missing_ok(tx.open_table(STREAMS))? {
            Some(t) => match t.get((device, boot)).map_err(storage)? {
                None => Ok(None),
                Some(v) => match rows::stream_decode(device, boot, v.value()) {
                    Ok(next) => Ok(Some(next)),
                    Err(e) => {
                        // Read as a new stream: a reading re-sent from before may enter twice,
                        // none is refused. Stalling the device instead would lose its readings.
                        self.damaged(&format!("device {device:?} boot {boot} (dedup state)"), e);
                        Ok(None)
                    }
                },
            },
            None => Ok(None),
        })
    }

    fn apply_retention(&self, now_ms: i64) -> Result<RetentionReport, LogError> {
        let rows: Vec<TopicRow> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut total = RetentionReport::default();
        for row in rows {
            if row.spec.retention_ms.is_none() && row.spec.retention_bytes.is_none() {
                continue;
            }
            for p in 0..row.spec.partitions {
                let report = self.write(|tx| {
                    let mut parts = tx.open_table(PARTS).map_err(storage)?;
                    let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
                    let mut stats = self.part_for_write(&parts, &chunks, &row.spec.name, row.id, p)?;
                    let (drop, report) =
                        policy::retention(&row.spec, now_ms, chunk_infos(&chunks, row.id, p)?, stats.bytes)?;
                    let Some(&last) = drop.last() else {
                        return Ok(report);
                    };
                    chunks
                        .retain_in((row.id, p, 0)..=(row.id, p, last), |_, _| false)
                        .map_err(storage)?;
                    stats.records -= report.records.min(stats.records);
                    stats.bytes -= report.bytes.min(stats.bytes);
                    stats.first_offset = first_stored(&chunks, row.id, p, stats.next_offset)?;
                    put_part(&mut parts, row.id, p, &stats)?;
                    Ok(report)
                });
                let report = match report {
                    Ok(r) => r,
                    // One damaged partition does not stop retention elsewhere.
                    Err(e @ LogError::Corrupt(_)) => {
                        self.damaged(
                            &format!("retention of topic {:?} partition {p}", row.spec.name),
                            e,
                        );
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                total.chunks += report.chunks;
                total.records += report.records;
                total.bytes += report.bytes;
            }
        }
        if total.chunks > 0 {
            self.reserve.freed();
        }
        Ok(total)
    }

    fn truncate(&self, topic: &str, partition: u32, below: u64) -> Result<RetentionReport, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.write(|tx| {
            let mut parts = tx.open_table(PARTS).map_err(storage)?;
            let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
            let mut stats = self.part_for_write(&parts, &chunks, topic, id, partition)?;
            let (drop, report) =
                policy::truncate(below, chunk_infos(&chunks, id, partition)?).map_err(|e| {
                    self.damaged(&format!("truncation of topic {topic:?} partition {partition}"), e)
                })?;
            let Some(&last) = drop.last() else {
                return Ok(report);
            };
            chunks
                .retain_in((id, partition, 0)..=(id, partition, last), |_, _| false)
                .map_err(storage)?;
            stats.records -= report.records.min(stats.records);
            stats.bytes -= report.bytes.min(stats.bytes);
            stats.first_offset = first_stored(&chunks, id, partition, stats.next_offset)?;
            put_part(&mut parts, id, partition, &stats)?;
            self.reserve.freed();
            Ok(report)
        })
    }

    fn compact(&self, topic: &str) -> Result<u64, LogError> {
        let row = self.topic(topic)?;
        let mut removed = 0;
        for p in 0..row.spec.partitions {
            let n = self.write(|tx| {
                let mut parts = tx.open_table(PARTS).map_err(storage)?;
                let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
                let all = chunks
                    .range((row.id, p, 0)..=(row.id, p, u64::MAX))
                    .map_err(storage)?
                    .map(|e| e.map(|(k, v)| (k.value().2, v.value().to_vec())).map_err(storage))
                    .collect::<Result<Vec<_>, _>>()?;
                let rewrites = policy::compact(&all)?;
                if rewrites.is_empty() {
                    return Ok(0);
                }
                let mut stats = self.part_for_write(&parts, &chunks, topic, row.id, p)?;
                let mut n = 0;
                for rw in rewrites {
                    let old = chunks
                        .remove((row.id, p, rw.base))
                        .map_err(storage)?
                        .map_or(0, |v| v.value().len() as u64);
                    stats.bytes -= old.min(stats.bytes);
                    if let Some(bytes) = &rw.bytes {
                        chunks
                            .insert((row.id, p, rw.base), bytes.as_slice())
                            .map_err(storage)?;
                        stats.bytes += bytes.len() as u64;
                    }
                    stats.records -= rw.removed.min(stats.records);
                    n += rw.removed;
                }
                stats.first_offset = first_stored(&chunks, row.id, p, stats.next_offset)?;
                put_part(&mut parts, row.id, p, &stats)?;
                Ok(n)
            });
            removed += match n {
                Ok(n) => n,
                // A damaged chunk is left as it is (compaction would have to read it), and the
                // other partitions are compacted.
                Err(e @ LogError::Corrupt(_)) => {
                    self.damaged(&format!("compaction of topic {topic:?} partition {p}"), e);
                    0
                }
                Err(e) => return Err(e),
            };
        }
        Ok(removed)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        self.read_db(|tx| match table_missing_ok(tx.open_table(META))? {
            Some(t) => match t.get(key).map_err(storage)? {
                None => Ok(None),
                Some(v) => match rows::unseal(key.as_bytes(), v.value()) {
                    Some(value) => Ok(Some(value.to_vec())),
                    None => Err(self.damaged(&format!("metadata {key:?}"), rows::damaged("value"))),
                },
            },
            None => Ok(None),
        })
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), LogError> {
        self.write(|tx| {
            tx.open_table(META)
                .map_err(storage)?
                .insert(key, rows::seal(key.as_bytes(), value).as_slice())
                .map_err(storage)?;
            Ok(())
        })
    }

    fn damage(&self) -> Option<StoreDamage> {
        self.damage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn verify(&self) -> Result<VerifyReport, LogError> {
        RedbLog::verify(self)
    }

    fn opened_with_repair(&self) -> bool {
        RedbLog::opened_with_repair(self)
    }

    fn write_failure(&self) -> Option<String> {
        self.db.write_failure()
    }

    fn skip_damaged(&self, topic: &str, partition: u32, from: u64) -> Result<Option<u64>, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.read_db(|tx| {
            let Some(chunks) = table_missing_ok(tx.open_table(CHUNKS))? else {
                return Ok(None);
            };
            let mut after = chunks
                .range((id, partition, from.saturating_add(1))..=(id, partition, u64::MAX))
                .map_err(storage)?;
            match after.next() {
                Some(e) => Ok(Some(e.map_err(storage)?.0.value().2)),
                None => Ok(None),
            }
        })
    }

    fn quarantine(&self) -> Result<VerifyReport, LogError> {
        RedbLog::quarantine(self)
    }
}
