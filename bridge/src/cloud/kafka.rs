//! [`Cloud`] over librdkafka: an idempotent producer per session (acks=all, infinite message
//! timeout: librdkafka retries through outages without reordering), an admin client for the
//! topics, and a consumer for the reconcile scan.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::debug;

use super::{Cloud, CloudSession, Created, Failure, OutRecord, ProducerStats, Report, Seen, Sent, Tag};
use crate::config::BridgeConfig;
use crate::{headers, Error, Result};

/// The linked librdkafka's version, e.g. `2.12.1`.
pub fn librdkafka_version() -> String {
    rdkafka::util::get_rdkafka_version().1
}

/// Timeout of metadata and watermark requests.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka-compatible cluster reached with librdkafka.
#[derive(Debug)]
pub struct Kafka {
    cfg: BridgeConfig,
    gateway_id: String,
    admin: Option<AdminClient<DefaultClientContext>>,
}

impl Kafka {
    /// The cluster `cfg.bootstrap` names; clients are made when first needed.
    pub fn new(cfg: BridgeConfig, gateway_id: &str) -> Kafka {
        Kafka {
            cfg,
            gateway_id: gateway_id.into(),
            admin: None,
        }
    }

    /// Settings every client shares, then `extra`, then the pass-through (which wins).
    fn config_with(&self, extra: &[(&str, String)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.cfg.bootstrap)
            .set("client.id", format!("edge-bridge-{}", self.gateway_id))
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "10000")
            .set("socket.keepalive.enable", "true")
            .set("log_level", "3");
        for (k, v) in extra {
            c.set(*k, v);
        }
        for (k, v) in &self.cfg.librdkafka {
            c.set(k, v);
        }
        c
    }

    fn admin(&mut self) -> Result<&AdminClient<DefaultClientContext>> {
        let admin = match self.admin.take() {
            Some(a) => a,
            None => self
                .config_with(&[])
                .create()
                .map_err(|e| Error::cloud("creating the Kafka admin client", e))?,
        };
        Ok(self.admin.insert(admin))
    }

    fn consumer(&self) -> Result<BaseConsumer<Quiet>> {
        self.config_with(&[
            ("group.id", format!("edge-bridge-reconcile-{}", self.gateway_id)),
            ("enable.auto.commit", "false".into()),
            ("enable.partition.eof", "false".into()),
        ])
        .create_with_context(Quiet)
        .map_err(|e| Error::cloud("creating the reconcile consumer", e))
    }
}

impl Cloud for Kafka {
    type Session = KafkaSession;

    fn partition_counts(&mut self, topics: &[String]) -> Result<BTreeMap<String, u32>> {
        let md = self
            .admin()?
            .inner()
            .fetch_metadata(None, TIMEOUT)
            .map_err(|e| Error::cloud("cloud metadata", e))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && topics.iter().any(|n| n == t.name()))
            .map(|t| (t.name().to_string(), t.partitions().len() as u32))
            .collect())
    }

    fn create_topic(&mut self, topic: &str, partitions: u32) -> Result<Created> {
        // The request's own timeout too: librdkafka's default (socket.timeout.ms, 60 s) is what
        // a cut link made the call last.
        let opts = AdminOptions::new()
            .operation_timeout(Some(TIMEOUT))
            .request_timeout(Some(TIMEOUT));
        let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1));
        let results = futures::executor::block_on(self.admin()?.create_topics([&new], &opts))
            .map_err(|e| Error::cloud("creating cloud topics", e))?;
        Ok(match results.into_iter().next() {
            Some(Ok(_)) => Created::Yes,
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Created::Exists,
            Some(Err((_, e))) => Created::Refused(e.to_string()),
            None => Created::Refused("no answer".into()),
        })
    }

    fn watermarks(&mut self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        self.admin()?
            .inner()
            .fetch_watermarks(topic, partition, TIMEOUT)
            .map_err(|e| Error::cloud(format!("cloud watermarks of {topic}/{partition}"), e))
    }

    fn scan(
        &mut self,
        ranges: &[(String, i32, i64, i64)],
        stopping: &dyn Fn() -> bool,
        f: &mut dyn FnMut(Seen<'_>),
    ) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        let mut targets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (t, p, from, to) in ranges.iter().filter(|r| r.2 < r.3) {
            tpl.add_partition_offset(t, *p, Offset::Offset(*from))
                .map_err(|e| Error::cloud("reconcile assignment", e))?;
            targets.insert((t.clone(), *p), *to);
        }
        if targets.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer()?;
        consumer
            .assign(&tpl)
            .map_err(|e| Error::cloud("reconcile assignment", e))?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !targets.is_empty() {
            if stopping() {
                return Err(Error::Stopping);
            }
            if Instant::now() >= deadline {
                return Err(Error::Cloud(
                    "reconcile did not reach the cloud's end in 300 s".into(),
                ));
            }
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m.map_err(|e| Error::cloud("reading the cloud tail", e))?;
            let k = (m.topic().to_string(), m.partition());
            let Some(&to) = targets.get(&k) else { continue };
            if m.offset() >= to {
                targets.remove(&k);
                continue;
            }
            let (mut edge, mut replay) = (None, false);
            if let Some(h) = m.headers() {
                for Header { key, value } in h.iter() {
                    match key {
                        headers::EDGE => edge = value,
                        headers::REPLAY => replay = true,
                        _ => {}
                    }
                }
            }
            f(Seen {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                edge,
                replay,
            });
            if m.offset() + 1 >= to {
                targets.remove(&k);
            }
        }
        Ok(())
    }

    fn session(&mut self) -> Result<KafkaSession> {
        let c = self.config_with(&[
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            // Retry through any outage: idempotence keeps the order, the window bounds memory.
            ("message.timeout.ms", "0".into()),
            ("partitioner", "murmur2_random".into()),
            // Retries and errors for the metrics (parsed on the bridge thread every 5 s).
            ("statistics.interval.ms", "5000".into()),
            ("compression.type", self.cfg.compression.as_str().into()),
            ("linger.ms", self.cfg.linger_ms.to_string()),
            ("batch.num.messages", self.cfg.batch_size.to_string()),
            (
                "queue.buffering.max.messages",
                (self.cfg.max_in_flight + 1_000).min(2_000_000).to_string(),
            ),
        ]);
        let producer = c
            .create_with_context(Ctx::default())
            .map_err(|e| Error::cloud("creating the Kafka producer", e))?;
        Ok(KafkaSession { producer })
    }
}

/// One session's idempotent producer.
pub struct KafkaSession {
    producer: BaseProducer<Ctx>,
}

impl std::fmt::Debug for KafkaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSession").finish_non_exhaustive()
    }
}

impl KafkaSession {
    fn take_reports(&self) -> Vec<Report> {
        std::mem::take(
            &mut *self
                .producer
                .context()
                .reports
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

impl CloudSession for KafkaSession {
    fn send(&mut self, r: &OutRecord<'_>, tag: Tag) -> Sent {
        let n = r.headers.len() + 3;
        let mut h = OwnedHeaders::new_with_capacity(n);
        for (k, v) in r.headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        for (k, v) in [
            (headers::EDGE, r.edge),
            (headers::READING, r.reading),
            (headers::REPLAY, r.replay),
        ] {
            if let Some(v) = v {
                h = h.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
        }
        let mut rec = BaseRecord::with_opaque_to(r.topic, tag.pack())
            .payload(r.value)
            .headers(h);
        if let Some(ts) = r.timestamp_ms {
            rec = rec.timestamp(ts);
        }
        if let Some(k) = r.key {
            rec = rec.key(k);
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        match self.producer.send(rec) {
            Ok(()) => Sent::Ok,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Sent::Full,
            Err((e, _)) => Sent::Refused(e.to_string()),
        }
    }

    fn poll(&mut self, timeout: Duration) -> Vec<Report> {
        self.producer.poll(timeout);
        self.take_reports()
    }

    fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("fatal producer error {code:?}: {reason}"))
    }

    fn stats(&self) -> ProducerStats {
        *self
            .producer
            .context()
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn flush(&mut self, timeout: Duration) -> Vec<Report> {
        let _ = self.producer.flush(timeout);
        self.take_reports()
    }
}

/// Collects delivery reports (drained after each `poll`) and statistics.
#[derive(Debug, Default)]
struct Ctx {
    reports: Mutex<Vec<Report>>,
    stats: Mutex<ProducerStats>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        debug!(%error, reason, "librdkafka");
    }

    /// Only the few fields the metrics need, read from librdkafka's statistics JSON.
    fn stats_raw(&self, json: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
            debug!("librdkafka statistics: not JSON");
            return;
        };
        let sum = |field: &str| -> u64 {
            v["brokers"]
                .as_object()
                .map_or(0, |b| b.values().filter_map(|b| b[field].as_u64()).sum())
        };
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = ProducerStats {
            retries: sum("txretries"),
            disconnects: sum("disconnects"),
            queued: v["msg_cnt"].as_u64().unwrap_or(0),
        };
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let result = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) if permanent(e) => Err(Failure::Permanent(e.to_string())),
            Err((e, _)) => Err(Failure::Retriable(e.to_string())),
        };
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Report {
                tag: Tag::unpack(tag),
                result,
            });
    }
}

/// librdkafka's own error callbacks, at debug level: the bridge reports outages itself
/// (status, metrics, one warning per failed session), not once per broker connection attempt.
#[derive(Debug, Default)]
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        debug!(%error, reason, "librdkafka");
    }
}

impl ConsumerContext for Quiet {}

/// Errors no retry can fix: the record is counted as rejected.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
        )
    )
}
