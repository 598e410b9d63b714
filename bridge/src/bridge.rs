//! The shell: one thread drives the [`Engine`] with librdkafka and the edge log — it waits
//! (for reports, for appends, for a backoff), the engine decides.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::clock::{Clock as _, SystemClock};
use crate::cloud::kafka::Kafka;
use crate::cloud::{Cloud, CloudSession};
use crate::config::BridgeConfig;
use crate::engine::{unforwarded, Engine, Job, ReplayStart};
use crate::source::EdgeLog;
use crate::status::{ReplayStatus, Status};
use crate::{Error, Result};

/// How often the status, the disk quota and persistence are seen to, whatever the cloud does.
const HOUSEKEEPING: Duration = Duration::from_millis(200);

/// What the handle shares with the thread.
#[derive(Debug, Default)]
struct Shared {
    status: Mutex<Status>,
    stop: AtomicBool,
    restart: AtomicBool,
    /// Jobs asked for, not yet taken by the thread.
    inbox: Mutex<Vec<Job>>,
}

/// The running bridge, owned by the agent.
#[derive(Debug)]
pub struct Bridge {
    shared: Arc<Shared>,
    next_job: AtomicU64,
    log: Arc<dyn EdgeLog>,
    mapping: Vec<(String, String)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Bridge {
    /// Starts the bridge thread. `versions` go into the heartbeat (e.g. the agent's version).
    pub fn start(
        cfg: BridgeConfig,
        log: Arc<dyn EdgeLog>,
        gateway_id: &str,
        versions: Vec<(String, String)>,
    ) -> Result<Bridge> {
        let (c, gw) = (cfg.clone(), gateway_id.to_string());
        Self::start_with(cfg, log, gateway_id, versions, move || Kafka::new(c.clone(), &gw))
    }

    /// [`Bridge::start`] with another cloud than librdkafka's: `connect` makes one per
    /// session (the tests' twin).
    pub fn start_with<C: Cloud + Send>(
        cfg: BridgeConfig,
        log: Arc<dyn EdgeLog>,
        gateway_id: &str,
        versions: Vec<(String, String)>,
        connect: impl Fn() -> C + Send + 'static,
    ) -> Result<Bridge> {
        let engine = Engine::new(
            cfg.clone(),
            log.clone(),
            Arc::new(SystemClock),
            gateway_id,
            versions,
        )?;
        let shared = Arc::new(Shared::default());
        *shared.status.lock().unwrap_or_else(|e| e.into_inner()) = engine.snapshot();
        let next_job = AtomicU64::new(engine.max_job_id() + 1);
        let mapping = engine.mapping();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("bridge".into())
            .spawn(move || Shell { engine, shared: sh }.run(connect))
            .map_err(|e| Error::Config(format!("starting the bridge thread: {e}")))?;
        Ok(Bridge {
            shared,
            next_job,
            log,
            mapping,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The bridge's status, true when read: checkpoints and counters as of the bridge's last
    /// snapshot (a few times a second; a checkpoint can only be behind, never ahead), and the
    /// backlog measured against the edge log's end now, so "backlog 0" never hides a record
    /// appended since the snapshot.
    pub fn status(&self) -> Status {
        let mut st = self
            .shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = SystemClock.wall_ms();
        for s in &mut st.sources {
            let Ok(info) = self.log.partition(&s.topic, s.partition) else {
                continue; // the snapshot's figures stand
            };
            let (records, bytes) = unforwarded(s.checkpoint, &info);
            if records > 0 && s.oldest_age_ms == 0 {
                // Not in the snapshot's backlog: its age is read now.
                if let Ok(r) = self.log.read(&s.topic, s.partition, s.checkpoint, 1, usize::MAX) {
                    s.oldest_age_ms = r.first().map_or(0, |r| (now - r.timestamp_ms).max(0) as u64);
                }
            }
            if records == 0 {
                s.oldest_age_ms = 0;
            }
            s.next_offset = info.next_offset;
            s.backlog_records = records;
            s.backlog_bytes = bytes;
        }
        st
    }

    /// Queues a replay of `topic` (one partition or all) from `start` to the current end of
    /// the log; records carry a `replay` header. Returns the job's first status.
    pub fn replay(&self, topic: &str, partition: Option<u32>, start: ReplayStart) -> Result<ReplayStatus> {
        let (_, cloud_topic) = self
            .mapping
            .iter()
            .find(|(e, _)| e == topic)
            .ok_or_else(|| Error::Request(format!("topic {topic:?} is not forwarded to the cloud")))?;
        let now = Instant::now();
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let job = Job::plan(
            &*self.log,
            id,
            topic,
            cloud_topic,
            partition,
            start,
            now,
            SystemClock.wall_ms(),
        )?;
        let status = job.status(now);
        self.shared
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job);
        Ok(status)
    }

    /// A replay job's status.
    pub fn replay_status(&self, id: u64) -> Option<ReplayStatus> {
        let inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = inbox.iter().find(|j| j.id() == id) {
            return Some(j.status(Instant::now()));
        }
        drop(inbox);
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replays
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }

    /// Ends the current session and starts a new one, as after an outage: a new producer
    /// (re-resolving the bootstrap servers), reconciliation with the cloud, and what was in
    /// flight sent again from the checkpoints. For operators after a change on the cloud side.
    pub fn restart_session(&self) {
        self.shared.restart.store(true, Ordering::SeqCst);
    }

    /// Stops: waits up to a few seconds for what is in flight, persists the checkpoints.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The bridge thread.
struct Shell {
    engine: Engine,
    shared: Arc<Shared>,
}

impl Shell {
    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Moves asked-for jobs into the engine and publishes the status, under the inbox's lock:
    /// a job is always visible to [`Bridge::replay_status`].
    fn publish(&mut self) {
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
        for job in inbox.drain(..) {
            self.engine.add_job(job);
        }
        *self.shared.status.lock().unwrap_or_else(|e| e.into_inner()) = self.engine.snapshot();
    }

    fn run<C: Cloud + Send>(mut self, connect: impl Fn() -> C) {
        // Forwarding yields the CPU to ingest: on a busy gateway a drain must never slow the
        // Acks devices wait for. librdkafka's threads, created from this one, inherit it.
        // SAFETY: plain syscalls on the calling thread's id.
        let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
        if niced != 0 {
            debug!("could not lower the bridge thread's priority");
        }
        self.publish();
        let mut backoff = Duration::from_millis(500);
        while !self.stopping() {
            let before = self.engine.progress();
            let mut cloud = connect();
            let result = self.session(&mut cloud);
            self.engine.end_session(result.as_ref().err());
            match result {
                Ok(()) | Err(Error::Stopping) => break,
                Err(Error::RestartRequested) => info!("bridge session ended on request; starting a new one"),
                Err(e) => {
                    if self.engine.progress() > before {
                        backoff = Duration::from_millis(500);
                    }
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "bridge session ended");
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !self.stopping() {
                        self.engine.housekeeping(None);
                        self.publish();
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.engine.persist();
        self.publish();
        info!("bridge stopped");
    }

    /// Starts a session. The cloud's answers may take long (on a cut link every request waits
    /// out its timeout, and the reconcile scan reads what the cloud holds): they are awaited on
    /// a helper thread while this one keeps the disk quota enforced and the status true.
    fn start_session<C: Cloud + Send>(&mut self, cloud: &mut C) -> Result<C::Session> {
        let setup = self.engine.begin_session();
        self.publish();
        let found = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel();
            let shared = self.shared.clone();
            let setup = &setup;
            let cloud = &mut *cloud;
            scope.spawn(move || {
                let stopping = || shared.stop.load(Ordering::SeqCst);
                let _ = tx.send(setup.discover(cloud, &stopping));
            });
            loop {
                match rx.recv_timeout(HOUSEKEEPING) {
                    Ok(found) => break found,
                    Err(RecvTimeoutError::Timeout) => {
                        self.engine.housekeeping(None);
                        self.publish();
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        break Err(Error::Cloud(
                            "the session's setup thread ended without an answer".into(),
                        ))
                    }
                }
            }
        })?;
        self.engine.open_session(found, cloud)
    }

    fn session<C: Cloud + Send>(&mut self, cloud: &mut C) -> Result<()> {
        let mut session = self.start_session(cloud)?;
        self.publish();
        let mut append_seen = 0;
        let mut last_house = Instant::now();
        loop {
            if self.stopping() {
                self.engine.stop(&mut session, Duration::from_secs(5));
                return Ok(());
            }
            let sent = self.engine.pump(&mut session)?;
            let reports = if sent > 0 {
                session.poll(Duration::ZERO)
            } else if self.engine.in_flight() > 0 {
                session.poll(Duration::from_millis(2))
            } else {
                let r = session.poll(Duration::ZERO);
                append_seen = self
                    .engine
                    .log()
                    .wait_for_append(append_seen, Duration::from_millis(50));
                r
            };
            self.engine.on_reports(reports)?;
            if let Some(e) = session.fatal_error() {
                return Err(Error::Cloud(e));
            }
            if self.shared.restart.swap(false, Ordering::SeqCst) {
                return Err(Error::RestartRequested);
            }
            if last_house.elapsed() >= HOUSEKEEPING {
                last_house = Instant::now();
                self.engine.housekeeping(Some(&mut session));
                self.publish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::twin::Twin;
    use crate::source::mem::MemLog;
    use foundation::wait;

    /// A cloud whose answers hang (a link that swallows requests) holds the session's start
    /// for as long as it likes; meanwhile the disk quota still holds and the status stays true.
    /// (The engine used to wait for those answers on its own thread: a cut during the first
    /// session's setup let the backlog grow past the quota until the requests timed out.)
    #[test]
    fn the_quota_and_the_status_hold_while_the_cloud_hangs_a_session_start() {
        const QUOTA: u64 = 20_000;
        let log = Arc::new(MemLog::new());
        log.create("telemetry", 3, false);
        log.create("device-status", 1, true);
        log.create("dead-letter", 1, false);
        let twin = Twin::new(7);
        twin.faults(|f| f.stall = true);
        let cfg = BridgeConfig {
            bootstrap: "twin".into(),
            backlog_quota_bytes: Some(QUOTA),
            ..BridgeConfig::default()
        };
        // A failed check must not leave the bridge's thread waiting on the twin forever.
        struct Unstall(Twin);
        impl Drop for Unstall {
            fn drop(&mut self) {
                self.0.faults(|f| f.stall = false);
            }
        }
        let t = twin.clone();
        let bridge = Bridge::start_with(cfg, log.clone(), "gw", Vec::new(), move || t.clone()).unwrap();
        let _unstall = Unstall(twin.clone()); // dropped before the bridge
        let backlog = |b: &Bridge| -> (u64, u64) {
            let st = b.status();
            let tel = st.sources.iter().filter(|s| s.topic == "telemetry");
            (
                tel.clone().map(|s| s.backlog_bytes).sum(),
                tel.map(|s| s.backlog_records).sum(),
            )
        };
        wait::until(
            Duration::from_secs(10),
            "the session's start to ask the cloud",
            || (twin.stalled() > 0).then_some(()),
        )
        .unwrap();
        // 3 partitions × 50 appends × 20 records of about 100 bytes: some 300 kB, while the
        // cloud hangs.
        let mut total = 0u64;
        for round in 0..50u64 {
            for p in 0..3u32 {
                let recs = (0..20u64)
                    .map(|i| {
                        let n = round * 20 + i;
                        (Some(format!("d{p}").into_bytes()), vec![b'x'; 100], Some((p, n)))
                    })
                    .collect();
                log.append("telemetry", p, recs, 0);
                total += 20;
            }
        }
        wait::until(
            Duration::from_secs(20),
            "the quota to hold while the cloud hangs",
            || (backlog(&bridge).0 <= QUOTA).then_some(()),
        )
        .unwrap();
        assert!(
            backlog(&bridge).1 < total,
            "records went while no session was up: {:?}",
            backlog(&bridge)
        );
        twin.faults(|f| f.stall = false);
        wait::until(Duration::from_secs(20), "the backlog to drain", || {
            (backlog(&bridge) == (0, 0)).then_some(())
        })
        .unwrap();
        let st = bridge.status();
        let dropped: u64 = st
            .sources
            .iter()
            .filter(|s| s.topic == "telemetry")
            .map(|s| s.dropped)
            .sum();
        let delivered: u64 = twin.records("telemetry").iter().map(|p| p.len() as u64).sum();
        assert!(dropped > 0, "300 kB cannot fit a 20 kB quota");
        assert_eq!(
            delivered + dropped,
            total,
            "what arrived plus what was dropped is everything"
        );
        bridge.shutdown();
    }
}
