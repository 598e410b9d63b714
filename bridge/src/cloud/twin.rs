//! An in-memory Kafka cluster for the engine's tests, with the faults a real one has:
//! unreachable (nothing delivered, sessions keep retrying), retriable failures (of a record
//! and, as with an idempotent producer, every later record of its session and partition),
//! reports lost with the session (the record is in the cloud, the engine never heard),
//! deliveries interleaved across partitions in a seeded random order, a full producer queue,
//! and records too large for the cloud. It keeps the [`super::Cloud`] MUST rules.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{Cloud, CloudSession, Created, Failure, OutRecord, ProducerStats, Report, Seen, Sent, Tag};
use crate::{Error, Result};

/// A record as the twin stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinRecord {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl TwinRecord {
    /// The value of header `k`.
    pub fn header(&self, k: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_slice())
    }
}

/// Fault settings; change them at any time through [`Twin::faults`].
#[derive(Debug, Clone)]
pub struct Faults {
    /// Unreachable: nothing is delivered, admin calls fail, new sessions fail.
    pub down: bool,
    /// The next this many deliveries fail (retriably).
    pub fail_next: u64,
    /// At most this many records are delivered per poll.
    pub deliver_per_poll: usize,
    /// At most this many reports are returned per poll (the rest wait: lost if the session
    /// is dropped first).
    pub reports_per_poll: usize,
    /// A session's queue holds at most this many records ([`Sent::Full`] beyond).
    pub queue: usize,
    /// Records larger than this are refused by the cloud for good.
    pub max_record: usize,
    /// Topic, watermark and scan calls wait while this is set, as on a link that swallows
    /// requests until their timeouts.
    pub stall: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            down: false,
            fail_next: 0,
            deliver_per_poll: usize::MAX,
            reports_per_poll: usize::MAX,
            queue: usize::MAX,
            max_record: usize::MAX,
            stall: false,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    topics: BTreeMap<String, Vec<Vec<TwinRecord>>>,
    faults: Faults,
    /// Calls that waited on [`Faults::stall`].
    stalled: u64,
    /// xorshift state for the delivery order.
    rng: u64,
}

impl Inner {
    fn random(&mut self, n: usize) -> usize {
        let mut x = self.rng.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x % n.max(1) as u64) as usize
    }
}

/// The cluster; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Twin {
    inner: Arc<Mutex<Inner>>,
}

impl Twin {
    /// An empty cluster whose delivery order follows `seed`.
    pub fn new(seed: u64) -> Twin {
        let t = Twin::default();
        t.lock().rng = seed | 1;
        t
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls that have waited on [`Faults::stall`] (the one waiting now included).
    pub fn stalled(&self) -> u64 {
        self.lock().stalled
    }

    /// Changes the faults.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.lock().faults);
    }

    /// Creates a topic (as an operator would, before the bridge starts).
    pub fn create(&self, topic: &str, partitions: u32) {
        self.lock()
            .topics
            .entry(topic.into())
            .or_insert_with(|| vec![Vec::new(); partitions as usize]);
    }

    /// Every record of `topic`, per partition.
    pub fn records(&self, topic: &str) -> Vec<Vec<TwinRecord>> {
        self.lock().topics.get(topic).cloned().unwrap_or_default()
    }

    fn reachable(&self) -> Result<MutexGuard<'_, Inner>> {
        let mut g = self.lock();
        if g.faults.stall {
            g.stalled += 1;
            while g.faults.stall {
                drop(g);
                std::thread::sleep(std::time::Duration::from_millis(5));
                g = self.lock();
            }
        }
        if g.faults.down {
            return Err(Error::Cloud("the twin cloud is unreachable".into()));
        }
        Ok(g)
    }
}

/// A stable hash of the key (the twin's partitioner; not Kafka's murmur2, which the engine
/// does not depend on: it only needs one key to stay in one partition).
fn partition_of(key: Option<&[u8]>, n: usize) -> usize {
    let h = key
        .unwrap_or_default()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    (h % n.max(1) as u64) as usize
}

impl Cloud for Twin {
    type Session = TwinSession;

    fn partition_counts(&mut self, topics: &[String]) -> Result<BTreeMap<String, u32>> {
        let g = self.reachable()?;
        Ok(topics
            .iter()
            .filter_map(|t| g.topics.get(t).map(|p| (t.clone(), p.len() as u32)))
            .collect())
    }

    fn create_topic(&mut self, topic: &str, partitions: u32) -> Result<Created> {
        let mut g = self.reachable()?;
        if g.topics.contains_key(topic) {
            return Ok(Created::Exists);
        }
        g.topics
            .insert(topic.into(), vec![Vec::new(); partitions as usize]);
        Ok(Created::Yes)
    }

    fn watermarks(&mut self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        let g = self.reachable()?;
        let p = g
            .topics
            .get(topic)
            .and_then(|t| t.get(partition as usize))
            .ok_or_else(|| Error::Cloud(format!("no partition {topic}/{partition}")))?;
        Ok((0, p.len() as i64))
    }

    fn scan(
        &mut self,
        ranges: &[(String, i32, i64, i64)],
        stopping: &dyn Fn() -> bool,
        f: &mut dyn FnMut(Seen<'_>),
    ) -> Result<()> {
        let g = self.reachable()?;
        for (t, p, from, to) in ranges {
            if stopping() {
                return Err(Error::Stopping);
            }
            let Some(recs) = g.topics.get(t).and_then(|t| t.get(*p as usize)) else {
                continue;
            };
            for o in (*from).max(0)..(*to).min(recs.len() as i64) {
                let r = &recs[o as usize];
                f(Seen {
                    topic: t,
                    partition: *p,
                    offset: o,
                    edge: r.header(crate::headers::EDGE),
                    replay: r.header(crate::headers::REPLAY).is_some(),
                });
            }
        }
        Ok(())
    }

    fn session(&mut self) -> Result<TwinSession> {
        drop(self.reachable()?);
        Ok(TwinSession {
            twin: self.clone(),
            queue: VecDeque::new(),
            reports: VecDeque::new(),
            failed: Vec::new(),
        })
    }
}

#[derive(Debug)]
struct Queued {
    tag: Tag,
    topic: String,
    partition: Option<i32>,
    rec: TwinRecord,
}

/// One session's producer on the twin.
#[derive(Debug)]
pub struct TwinSession {
    twin: Twin,
    queue: VecDeque<Queued>,
    reports: VecDeque<Report>,
    /// `(topic, partition)` pairs where a record failed: the session's later records there
    /// fail too.
    failed: Vec<(String, usize)>,
}

impl TwinSession {
    /// Delivers up to `n` queued records, interleaving partitions at random but keeping each
    /// partition's send order.
    fn deliver(&mut self, g: &mut Inner, n: usize) {
        for _ in 0..n {
            if self.queue.is_empty() || g.faults.down {
                return;
            }
            // Pick a queued record that is first of its (topic, partition) in the queue.
            let k = g.random(self.queue.len().min(8));
            let pick = {
                let q = &self.queue[k];
                let n_of = |q: &Queued, g: &Inner| {
                    let n = g.topics.get(&q.topic).map_or(0, Vec::len);
                    q.partition
                        .map_or_else(|| partition_of(q.rec.key.as_deref(), n), |p| p as usize)
                };
                let pk = n_of(q, g);
                let first = self
                    .queue
                    .iter()
                    .position(|o| o.topic == q.topic && n_of(o, g) == pk)
                    .unwrap_or(k);
                first
            };
            let Some(q) = self.queue.remove(pick) else { return };
            let Some(parts) = g.topics.get(&q.topic).map(Vec::len) else {
                self.reports.push_back(Report {
                    tag: q.tag,
                    result: Err(Failure::Retriable(format!("unknown topic {}", q.topic))),
                });
                continue;
            };
            let p = q
                .partition
                .map_or_else(|| partition_of(q.rec.key.as_deref(), parts), |p| p as usize);
            let size = q.rec.value.len() + q.rec.key.as_ref().map_or(0, Vec::len);
            let result = if p >= parts {
                Err(Failure::Retriable(format!("unknown partition {}/{p}", q.topic)))
            } else if self.failed.iter().any(|(t, fp)| *t == q.topic && *fp == p) {
                Err(Failure::Retriable(
                    "an earlier record of this partition failed".into(),
                ))
            } else if size > g.faults.max_record {
                Err(Failure::Permanent("record too large".into()))
            } else if g.faults.fail_next > 0 {
                g.faults.fail_next -= 1;
                self.failed.push((q.topic.clone(), p));
                Err(Failure::Retriable("injected failure".into()))
            } else {
                match g.topics.get_mut(&q.topic).and_then(|t| t.get_mut(p)) {
                    Some(log) => {
                        log.push(q.rec);
                        Ok((p as i32, log.len() as i64 - 1))
                    }
                    None => Err(Failure::Retriable(format!("unknown partition {}/{p}", q.topic))),
                }
            };
            self.reports.push_back(Report { tag: q.tag, result });
        }
    }

    fn take(&mut self, n: usize) -> Vec<Report> {
        let n = n.min(self.reports.len());
        self.reports.drain(..n).collect()
    }
}

impl CloudSession for TwinSession {
    fn send(&mut self, r: &OutRecord<'_>, tag: Tag) -> Sent {
        if self.queue.len() >= self.twin.lock().faults.queue {
            return Sent::Full;
        }
        let mut headers: Vec<(String, Vec<u8>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        for (k, v) in [
            (crate::headers::EDGE, r.edge),
            (crate::headers::READING, r.reading),
            (crate::headers::REPLAY, r.replay),
        ] {
            if let Some(v) = v {
                headers.push((k.into(), v.to_vec()));
            }
        }
        self.queue.push_back(Queued {
            tag,
            topic: r.topic.into(),
            partition: r.partition,
            rec: TwinRecord {
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.to_vec(),
                headers,
            },
        });
        Sent::Ok
    }

    fn poll(&mut self, _timeout: Duration) -> Vec<Report> {
        let twin = self.twin.clone();
        let mut g = twin.lock();
        let (d, r) = (g.faults.deliver_per_poll, g.faults.reports_per_poll);
        self.deliver(&mut g, d);
        drop(g);
        self.take(r)
    }

    fn fatal_error(&self) -> Option<String> {
        None
    }

    fn stats(&self) -> ProducerStats {
        ProducerStats {
            queued: self.queue.len() as u64,
            ..ProducerStats::default()
        }
    }

    fn flush(&mut self, _timeout: Duration) -> Vec<Report> {
        let twin = self.twin.clone();
        let mut g = twin.lock();
        self.deliver(&mut g, usize::MAX);
        drop(g);
        self.take(usize::MAX)
    }
}
