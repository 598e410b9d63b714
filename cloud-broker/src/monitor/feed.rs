//! The monitor's feed: an ordinary Kafka consumer in a consumer group of its own, reading the
//! monitored topics into a [`Monitor`](super::Monitor) on a thread of its own.
//!
//! Two clients ([`Client`]):
//! - **native** (the default): [`crate::client`], this crate's lean consumer. It walks each
//!   fetched batch in place and applies its records under one lock, a fraction of
//!   librdkafka's cost per record (BENCHMARKS.md), which is what lets a small cloud node
//!   monitor everything it ingests. Plaintext.
//! - **librdkafka** (feature `monitor-feed`): for clusters that need TLS or SASL, set with
//!   librdkafka's properties (`cloud-broker monitor --property`).
//!
//! Either reads every partition from the beginning the first time it is given it (so the
//! registry rebuilds itself from the log after a restart), from where the monitor stands after
//! a rebalance, and commits its offsets, so Kafka's tools show its lag.

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use super::{lock, Rec, Shared};
use crate::client::{self, Fetched, RecordsError, Walked};

/// The Kafka client the feed reads with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    /// [`crate::client`]: plaintext, the cheapest per record.
    #[default]
    Native,
    /// librdkafka: TLS, SASL and whatever else its properties set.
    Librdkafka,
}

/// What the feed connects to.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// The consumer group.
    pub group_id: String,
    /// librdkafka properties: TLS and SASL (`security.protocol`, `sasl.*`,
    /// `ssl.ca.location`), which the native client takes too, and any other for
    /// [`Client::Librdkafka`].
    pub properties: Vec<(String, String)>,
    /// The client.
    pub client: Client,
}

/// How long stopping waits for the consumer to leave its group. Leaving needs the group's
/// coordinator: when the cluster is going down with this node, it may never answer, and a
/// node's shutdown must not wait on it (the group forgets the member after its session
/// timeout anyway).
pub const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A running feed; [`Feed::stop`] leaves the group and joins the thread (waiting at most
/// [`STOP_WAIT`]).
pub struct Feed {
    stop: Box<dyn Fn() + Send + Sync>,
    thread: Option<std::thread::JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").finish_non_exhaustive()
    }
}

impl Feed {
    /// Starts reading into `monitor`.
    pub fn start(monitor: Shared, cfg: FeedConfig) -> anyhow::Result<Feed> {
        match cfg.client {
            Client::Native => native(monitor, cfg),
            #[cfg(feature = "monitor-feed")]
            Client::Librdkafka => super::rdkafka_feed::start(monitor, cfg),
            #[cfg(not(feature = "monitor-feed"))]
            Client::Librdkafka => {
                anyhow::bail!("this build has no librdkafka (feature monitor-feed): use client = \"native\"")
            }
        }
    }

    /// Runs `body` on the feed's thread; `stop` asks it to end.
    pub(super) fn spawn(
        stop: Box<dyn Fn() + Send + Sync>,
        body: impl FnOnce() + Send + 'static,
    ) -> anyhow::Result<Feed> {
        let (tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("monitor-feed".into())
            .spawn(move || {
                body();
                let _ = tx.send(());
            })?;
        Ok(Feed {
            stop,
            thread: Some(thread),
            done,
        })
    }

    /// Stops reading: leaves the group (a few seconds at most) and returns.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        (self.stop)();
        if let Some(t) = self.thread.take() {
            match self.done.recv_timeout(STOP_WAIT) {
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = t.join();
                }
                // Still leaving the group: left to finish, or to end with the process.
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    warn!("the monitor's consumer did not leave its group within {STOP_WAIT:?}; going on");
                }
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The native client on a thread with a runtime of its own.
fn native(monitor: Shared, cfg: FeedConfig) -> anyhow::Result<Feed> {
    let topics = lock(&monitor).settings.topic_names();
    let mut c = client::Config::new(&cfg.bootstrap, &cfg.group_id, topics);
    anyhow::ensure!(!c.bootstrap.is_empty(), "no bootstrap address");
    c.client_id = "iot-monitor".into();
    // TLS and SASL from librdkafka's security properties (others: the librdkafka client).
    c.login = client::conn::Login::from_properties(&cfg.properties)?.map(std::sync::Arc::new);
    // Fewer, fuller fetches: a broker answers when it has 1 MiB or after 200 ms, which is
    // far below the dashboard's 2 s refresh and halves the fetches of a busy cloud.
    c.min_bytes = 1 << 20;
    c.max_wait = std::time::Duration::from_millis(200);
    // Topics made after the monitor started (a first gateway) are read within 2 s.
    c.metadata_interval = std::time::Duration::from_secs(2);
    let (tx, rx) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Feed::spawn(
        Box::new(move || {
            let _ = tx.send(true);
        }),
        move || {
            yield_to_ingest();
            let mut sink = Sink {
                monitor,
                scratch: Vec::new(),
            };
            rt.block_on(client::run(c, &mut sink, rx));
        },
    )
}

/// Nice levels the feed's thread runs below the rest of the process.
pub const NICE_BELOW: i32 = 10;

/// Lowers the calling thread (the feed's: the native client runs on it alone) by
/// [`NICE_BELOW`] nice levels (to at most 19): the monitor is a reader of what the node
/// ingests, and on a busy node it should use the CPU that ingest leaves idle, not take CPU from
/// it. Under sustained contention it falls behind instead, and says so (`/api/monitor`'s lag).
fn yield_to_ingest() {
    // SAFETY: getpriority/setpriority on the calling thread's own id; no memory is touched.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() == 0 {
            let _ = libc::setpriority(libc::PRIO_PROCESS, tid, (now + NICE_BELOW).min(19));
        }
    }
}

/// The monitor as the native client's handler.
struct Sink {
    monitor: Shared,
    scratch: Vec<u8>,
}

impl client::Handler for Sink {
    fn start(&mut self, topic: &str, partition: i32) -> Option<i64> {
        // From where this monitor stands, or from the very beginning.
        lock(&self.monitor)
            .positions
            .get(topic)
            .and_then(|ps| ps.get(&partition))
            .map(|p| p.next)
    }

    fn fetched(&mut self, f: &Fetched<'_>) -> Result<Walked, (Walked, RecordsError)> {
        // One partition's records under one lock with one clock read.
        let now = foundation::time::now_ms();
        let mut g = lock(&self.monitor);
        let r = f.walk(&mut self.scratch, |r| {
            let rec = Rec {
                topic: f.topic,
                partition: f.partition,
                offset: r.offset,
                timestamp_ms: (r.timestamp_ms >= 0).then_some(r.timestamp_ms),
                key: r.key,
                value: r.value,
                edge: r.header(vocab::headers::EDGE),
            };
            g.apply_unpositioned(&rec, now);
        });
        let walked = match &r {
            Ok(w) => w,
            Err((w, e)) => {
                g.undecodable += 1;
                g.last_error = Some(format!("{}/{}: {e}", f.topic, f.partition));
                w
            }
        };
        // The position moves with the records, under the same lock (the lag is never
        // understated); the partition's end follows in `progress`.
        if let Some(next) = walked.next {
            g.advance(f.topic, f.partition, next, -1);
        }
        r
    }

    fn progress(&mut self, topic: &str, partition: i32, next: i64, end: i64) {
        lock(&self.monitor).advance(topic, partition, next, end);
    }

    fn state(&mut self, s: String) {
        let mut g = lock(&self.monitor);
        if g.feed != s {
            g.feed = s;
        }
    }
}
