//! Live-first mode: tail cursors that forward new records of caught-up devices ahead of a
//! backlog (see the engine's module docs).

use std::collections::HashMap;

use tracing::info;

use super::{Engine, Live};
use crate::cloud::{CloudSession, Sent, Tag};
use crate::Result;

impl Engine {
    /// Tail cursors of partitions in live-first mode.
    pub(super) fn live<S: CloudSession>(&mut self, session: &mut S) -> Result<usize> {
        let mut sent = 0;
        for i in 0..self.sources.len() {
            if self.held(i) {
                continue;
            }
            let s = &mut self.sources[i];
            let Some(live) = &mut s.live else { continue };
            if s.drain >= live.tail {
                info!(topic = %s.topic, partition = s.partition, "backlog drained; live-first mode off");
                s.live = None;
                continue;
            }
            if !live.scanned {
                // Keys only, a bounded slice per turn so the loop stays responsive.
                let from = live.scan.max(s.drain);
                let to = live.region_end.min(from.saturating_add(1_000_000));
                let backlog = &mut live.backlog;
                let scanned = self.log.scan_keys(&s.topic, s.partition, from, to, &mut |o, k| {
                    let k = k.unwrap_or_default();
                    match backlog.get_mut(k) {
                        Some(last) => *last = o,
                        None => {
                            backlog.insert(k.to_vec(), o);
                        }
                    }
                });
                if let Err(e) = scanned {
                    self.read_failed(i, &e);
                    continue;
                }
                let Some(live) = &mut self.sources[i].live else {
                    continue;
                };
                live.scan = to;
                live.scanned = to >= live.region_end;
                continue;
            }
            if self.in_flight >= self.cfg.max_in_flight {
                continue;
            }
            let room = self.cfg.max_in_flight - self.in_flight;
            let (topic, route, p) = (s.topic.clone(), s.route.clone(), s.partition);
            let recs = match self.log.read(&topic, p, live.tail, room.min(2_000), 4 << 20) {
                Ok(r) => r,
                Err(e) => {
                    self.read_failed(i, &e);
                    continue;
                }
            };
            for r in recs {
                let s = &mut self.sources[i];
                let Some(live) = &mut s.live else { break };
                if r.offset < live.tail {
                    continue;
                }
                let k = r.key.clone().unwrap_or_default();
                if live.backlog.get(&k).is_some_and(|&o| o >= s.drain) {
                    live.backlog.insert(k, r.offset);
                } else if s.tracker.needs_send(r.offset) {
                    let tag = Tag::Record {
                        src: i,
                        offset: r.offset,
                    };
                    match r.with_ref(|r| self.send(session, &route, tag, r, None))? {
                        Sent::Full => break,
                        Sent::Refused(_) => {}
                        Sent::Ok => {
                            let s = &mut self.sources[i];
                            s.tracker.sent(r.offset, self.epoch);
                            s.sent += 1;
                            sent += 1;
                        }
                    }
                }
                if let Some(live) = &mut self.sources[i].live {
                    live.tail = r.offset + 1;
                }
            }
        }
        Ok(sent)
    }

    /// Partitions further behind than the threshold start forwarding live data first; the
    /// backlog is what the log holds now. Called at every session start, before anything is
    /// sent (so what devices publish from then on is live), and as backlogs build up.
    pub(super) fn enter_live_first(&mut self) {
        for s in &mut self.sources {
            if s.live.is_none() && s.info.next_offset.saturating_sub(s.drain) > self.cfg.live_first_threshold
            {
                info!(topic = %s.topic, partition = s.partition, backlog = s.info.next_offset - s.drain, "backlog: live-first mode on");
                s.live = Some(Live {
                    tail: s.info.next_offset,
                    region_end: s.info.next_offset,
                    scan: s.drain,
                    scanned: false,
                    backlog: HashMap::new(),
                });
            }
        }
    }
}
