//! Sending: one record to the producer (headers, bandwidth cap), and the drain cursors.

use tracing::error;

use super::{Engine, Route};
use crate::cloud::{CloudSession, OutRecord, Sent, Tag, OFFSET_BITS};
use crate::headers;
use crate::source::EdgeRecordRef;
use crate::{Error, Result};

impl Engine {
    pub(super) fn refill(&mut self) {
        if let Some(cap) = self.cfg.max_bytes_per_sec {
            let cap = cap as f64;
            let now = self.clock.now();
            let dt = now.duration_since(self.refilled).as_secs_f64();
            self.refilled = now;
            self.tokens = (self.tokens + dt * cap).min(cap);
        }
    }

    pub(super) fn capped(&self) -> bool {
        self.cfg.max_bytes_per_sec.is_some() && self.tokens <= 0.0
    }

    /// Sends one edge record to `route` with its identity headers (and `replay`: the job id).
    /// A record the producer refuses for good is counted as rejected and acknowledged.
    pub(super) fn send<S: CloudSession>(
        &mut self,
        session: &mut S,
        route: &Route,
        tag: Tag,
        r: &EdgeRecordRef<'_>,
        replay: Option<u64>,
    ) -> Result<Sent> {
        if r.offset >= 1 << OFFSET_BITS {
            return Err(Error::Cloud(format!("edge offset {} beyond 2^48", r.offset)));
        }
        let mut b = [0u8; 20];
        let mut edge = std::mem::take(&mut self.scratch);
        edge.clear();
        edge.extend_from_slice(&route.prefix);
        edge.extend_from_slice(headers::decimal(r.offset, &mut b));
        let mut rd = [0u8; 41];
        let mut jb = [0u8; 20];
        let mut vbuf = std::mem::take(&mut self.value_buf);
        let rewritten = if route.reading && self.encoder.rewrites() {
            match self
                .encoder
                .reading(&route.cloud_topic, r.key, r.value, &mut vbuf)
            {
                Ok(w) => w,
                Err(crate::format::Unregistered) => {
                    // Held at the edge until the schema registry answers.
                    self.value_buf = vbuf;
                    self.scratch = edge;
                    return Ok(Sent::Full);
                }
            }
        } else {
            false
        };
        let out = OutRecord {
            topic: &route.cloud_topic,
            partition: route.partition,
            key: r.key,
            value: if rewritten { &vbuf } else { r.value },
            timestamp_ms: Some(r.timestamp_ms),
            headers: r.headers,
            edge: Some(&edge),
            reading: r.reading.map(|(boot, seq)| headers::reading(boot, seq, &mut rd)),
            replay: replay.map(|j| headers::decimal(j, &mut jb)),
        };
        let bytes = out.size();
        let sent = session.send(&out, tag);
        self.scratch = edge;
        self.value_buf = vbuf;
        match sent {
            Sent::Ok => {
                self.in_flight += 1;
                self.counters.sent_bytes += bytes as u64;
                if self.cfg.max_bytes_per_sec.is_some() {
                    self.tokens -= bytes as f64;
                }
            }
            Sent::Full => {}
            Sent::Refused(ref e) => match tag {
                Tag::Record { src, offset } => {
                    let s = &mut self.sources[src];
                    error!(topic = %s.topic, partition = s.partition, offset, error = %e, "record refused by the producer; counted as rejected");
                    s.rejected += 1;
                    s.tracker.sent(offset, self.epoch);
                    s.tracker.acked(offset);
                    self.dirty = true;
                }
                _ => return Err(Error::Cloud(format!("producing: {e}"))),
            },
        }
        Ok(sent)
    }

    /// Drain cursors, round robin, within the drain window and the bandwidth cap.
    pub(super) fn drain<S: CloudSession>(&mut self, session: &mut S) -> Result<usize> {
        let limit = self.drain_limit();
        // Refill in large steps: a read starting inside a chunk decodes the chunk's records
        // before it again, so many small reads cost more than a few big ones.
        let step = (limit / 4).max(1);
        let mut sent = 0;
        let n = self.sources.len();
        // Round robin across calls, so no partition's backlog waits for the others'.
        self.drain_first = (self.drain_first + 1) % n.max(1);
        let first = self.drain_first;
        for i in (0..n).map(|k| (first + k) % n) {
            if self.in_flight + step > limit || self.capped() {
                break;
            }
            if self.held(i) {
                continue;
            }
            let room = limit - self.in_flight;
            let s = &self.sources[i];
            let (topic, route, p, from) = (s.topic.clone(), s.route.clone(), s.partition, s.drain);
            // Records are borrowed from the log's pages and copied once, into the producer.
            let log = self.log.clone();
            let mut first = None;
            let mut failed = None;
            let read = log.read_with(&topic, p, from, room.min(5_000), &mut |r| {
                if first.is_none() {
                    first = Some(r.offset);
                    if r.offset > from {
                        self.skip(i, from, r.offset);
                    }
                }
                if self.sources[i].tracker.needs_send(r.offset) {
                    if self.capped() {
                        return false;
                    }
                    let tag = Tag::Record {
                        src: i,
                        offset: r.offset,
                    };
                    match self.send(session, &route, tag, r, None) {
                        Ok(Sent::Ok) => {
                            let s = &mut self.sources[i];
                            s.tracker.sent(r.offset, self.epoch);
                            s.sent += 1;
                            sent += 1;
                        }
                        Ok(Sent::Refused(_)) => {}
                        Ok(Sent::Full) => return false,
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    }
                }
                self.sources[i].drain = r.offset + 1;
                true
            });
            if let Some(e) = failed {
                return Err(e);
            }
            if let Err(e) = read {
                self.read_failed(i, &e);
                continue;
            }
            self.read_ok(i);
            // Nothing at or after `from`: if records were expected, they are gone.
            if first.is_none() && from < self.sources[i].info.next_offset {
                let info = match self.log.partition(&topic, p) {
                    Ok(info) => info,
                    Err(e) => {
                        self.read_failed(i, &e);
                        continue;
                    }
                };
                let gap_end = info.first_offset.min(info.next_offset);
                if gap_end > from {
                    self.skip(i, from, gap_end);
                }
            }
        }
        Ok(sent)
    }

    /// Offsets `from..to` are gone from the edge log before the drain reached them.
    pub(super) fn skip(&mut self, i: usize, from: u64, to: u64) {
        let s = &mut self.sources[i];
        let before = s.dropped();
        s.tracker.skip(from, to);
        s.drain = to;
        let now = s.dropped();
        if now > before {
            error!(
                topic = %s.topic,
                partition = s.partition,
                from,
                to,
                records = now - before,
                dropped_total = now,
                "records removed from the edge log before they reached the cloud (disk quota or retention)"
            );
        }
        self.dirty = true;
    }

    /// In flight at most for backlog and replays: the drain window, and never more than 90 %
    /// of the whole window (the rest is for live data). A short producer queue keeps live
    /// records from waiting behind queued backlog inside the producer.
    pub(super) fn drain_limit(&self) -> usize {
        self.cfg
            .drain_in_flight
            .min(self.cfg.max_in_flight * 9 / 10)
            .max(1)
    }
}
