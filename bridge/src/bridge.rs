//! The shell: one thread drives the [`Engine`] with librdkafka and the edge log — it waits
//! (for reports, for appends, for a backoff), the engine decides.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        let gw = gateway_id.to_string();
        let thread = std::thread::Builder::new()
            .name("bridge".into())
            .spawn(move || Shell { engine, shared: sh }.run(|| Kafka::new(cfg.clone(), &gw)))
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

    fn run(mut self, connect: impl Fn() -> Kafka) {
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

    fn session<C: Cloud>(&mut self, cloud: &mut C) -> Result<()> {
        let shared = self.shared.clone();
        let stopping = move || shared.stop.load(Ordering::SeqCst);
        let mut session = self.engine.start_session(cloud, &stopping)?;
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
            if last_house.elapsed() >= Duration::from_millis(200) {
                last_house = Instant::now();
                self.engine.housekeeping(Some(&mut session));
                self.publish();
            }
        }
    }
}
