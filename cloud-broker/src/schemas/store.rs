//! The registry's `_schemas` topic through librdkafka: a reader thread applies every entry
//! in order into [`Schemas`]; a registration writes its entry (acks=all) and answers only once
//! the reader has read it back and it won.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use super::{Entry, Error, Plan, SchemaType, Schemas, TOPIC};

/// How long a request waits for the store (the topic read up to its end, a write read back).
pub const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Default)]
struct Read {
    schemas: Schemas,
    /// The next offset the reader will read.
    next: i64,
}

/// The registry over its topic.
pub struct Store {
    read: Arc<(Mutex<Read>, Condvar)>,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// The topic is known to exist.
    created: AtomicBool,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// One registration at a time on this instance.
    writing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Read>) -> std::sync::MutexGuard<'_, Read> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Connects to `bootstrap` (extra librdkafka `properties` for another cluster) and starts
    /// reading the topic once it exists. The first registration creates it (one partition,
    /// compacted); until then the registry is empty and makes no topic.
    pub fn start(bootstrap: &str, properties: &[(String, String)]) -> anyhow::Result<Store> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap).set("log_level", "3");
        for (k, v) in properties {
            c.set(k, v);
        }
        // Looking up the topic must never create it with a broker's defaults.
        c.set("allow.auto.create.topics", "false");
        let producer: FutureProducer = c
            .clone()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create()?;
        let admin: AdminClient<DefaultClientContext> = c.create()?;
        // librdkafka assigns partitions only to a consumer with a group id; this one never
        // joins or commits (it reads the whole topic every start).
        let consumer: BaseConsumer = c
            .clone()
            .set("group.id", "iot-schema-registry")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "100")
            .create()?;
        let read: Arc<(Mutex<Read>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (read.clone(), stop.clone());
        let reader = std::thread::Builder::new()
            .name("schemas-reader".into())
            .spawn(move || run(consumer, r, s))?;
        Ok(Store {
            read,
            producer,
            admin,
            created: AtomicBool::new(false),
            stop,
            reader: Some(reader),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    /// Reads from the state once the reader has read the topic up to its current end (what
    /// was registered anywhere before this call is seen).
    pub async fn synced<T>(&self, f: impl FnOnce(&Schemas) -> T) -> Result<T, Error> {
        let end = self.end().await?;
        self.wait_for(end).await?;
        Ok(f(&lock(&self.read.0).schemas))
    }

    /// Reads from the state as the reader has it now.
    pub fn now<T>(&self, f: impl FnOnce(&Schemas) -> T) -> T {
        f(&lock(&self.read.0).schemas)
    }

    async fn end(&self) -> Result<i64, Error> {
        let p = self.producer.clone();
        let r = tokio::task::spawn_blocking(move || p.client().fetch_watermarks(TOPIC, 0, WAIT))
            .await
            .map_err(|e| Error::Store(e.to_string()))?;
        match r {
            Ok((_, high)) => Ok(high),
            // Nothing was ever registered.
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::UnknownPartition
                            | RDKafkaErrorCode::UnknownTopic
                    )
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(Error::Store(format!(
                "the registry's topic {TOPIC} is unavailable: {e}"
            ))),
        }
    }

    /// Creates the topic (one partition, compacted) unless it exists.
    async fn ensure_topic(&self) -> Result<(), Error> {
        if self.created.load(Ordering::Relaxed) {
            return Ok(());
        }
        let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .admin
            .create_topics([&topic], &opts)
            .await
            .map_err(|e| Error::Store(format!("creating {TOPIC}: {e}")))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(Error::Store(format!("creating {TOPIC}: {code}"))),
            }
        }
        self.created.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn wait_for(&self, end: i64) -> Result<(), Error> {
        let read = self.read.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + WAIT;
            let mut g = lock(&read.0);
            while g.next < end {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Store(format!(
                        "the registry has read {TOPIC} to offset {} of {end}; try again",
                        g.next
                    )));
                }
                g = read.1.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner()).0;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Store(e.to_string()))?
    }

    async fn write(&self, e: &Entry) -> Result<(), Error> {
        self.ensure_topic().await?;
        let key = format!(
            "{{\"subject\":{},\"version\":{}}}",
            serde_json::Value::from(e.subject.clone()),
            e.version
        );
        let value = serde_json::to_vec(e).map_err(|e| Error::Store(e.to_string()))?;
        let d = self
            .producer
            .send(
                FutureRecord::to(TOPIC).partition(0).key(&key).payload(&value),
                WAIT,
            )
            .await
            .map_err(|(err, _)| Error::Store(format!("writing to {TOPIC}: {err}")))?;
        self.wait_for(d.offset + 1).await
    }

    /// Registers `schema` under `subject`: its id, once the entry is in the topic and read
    /// back (an entry another instance wrote first at the same id or version makes this one
    /// plan again).
    pub async fn register(&self, subject: &str, kind: SchemaType, schema: &str) -> Result<u32, Error> {
        let c = super::canonical(kind, schema)?;
        let _one = self.writing.lock().await;
        for _ in 0..5 {
            let plan = self.synced(|s| s.plan(subject, kind, &c)).await??;
            let e = match plan {
                Plan::Existing { id, .. } => return Ok(id),
                Plan::New(e) => e,
            };
            self.write(&e).await?;
            if let Some((id, _)) = self.now(|s| s.find(subject, kind, &c)) {
                return Ok(id);
            }
            debug!(subject, "another instance registered first; planning again");
        }
        Err(Error::Store("registrations kept colliding; try again".into()))
    }

    /// Soft-deletes every live version of `subject`; the versions deleted.
    pub async fn delete_subject(&self, subject: &str) -> Result<Vec<u32>, Error> {
        let _one = self.writing.lock().await;
        let entries = self.synced(|s| s.delete_subject(subject)).await??;
        for e in &entries {
            self.write(e).await?;
        }
        Ok(entries.iter().map(|e| e.version).collect())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

/// The reader: waits for the topic to exist, then applies every entry in order.
fn run(consumer: BaseConsumer, read: Arc<(Mutex<Read>, Condvar)>, stop: Arc<AtomicBool>) {
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let exists = consumer
            .fetch_metadata(Some(TOPIC), Duration::from_secs(1))
            .is_ok_and(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == TOPIC && t.error().is_none() && !t.partitions().is_empty())
            });
        if exists {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut tpl = TopicPartitionList::new();
    if let Err(e) = tpl
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .and_then(|()| consumer.assign(&tpl))
    {
        warn!(error = %e, "the schema registry could not read its topic");
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "reading the registry's topic");
                continue;
            }
        };
        let mut g = lock(&read.0);
        match m.payload().map(serde_json::from_slice::<Entry>) {
            Some(Ok(e)) => {
                g.schemas.apply(&e);
            }
            // A tombstone (compaction) or a foreign record: counted, nothing else.
            _ => {
                g.schemas.entries += 1;
                g.schemas.ignored += 1;
            }
        }
        g.next = g.next.max(m.offset() + 1);
        drop(g);
        read.1.notify_all();
    }
}
