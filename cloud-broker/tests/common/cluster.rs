//! Cluster tests' shared parts: forming a cluster and creating a replicated topic through
//! librdkafka, where each partition's leader is, a producer that feeds a topic until stopped
//! and records every acknowledgement, reading a topic back exactly once, and the replicas'
//! digests (`/api/cluster/digests`) that say whether they hold byte-identical logs.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::Broker;

/// The bootstrap list of these nodes.
pub fn bootstrap(nodes: &[Broker]) -> String {
    nodes.iter().map(|n| n.addr()).collect::<Vec<_>>().join(",")
}

/// Waits until Metadata through `addr` names `n` brokers (every node has registered).
pub fn wait_formed(addr: &str, n: usize) {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    foundation::wait::until(Duration::from_secs(60), "the cluster to form", || {
        let seen = probe
            .fetch_metadata(None, Duration::from_secs(5))
            .map_or(0, |m| m.brokers().len());
        (seen >= n).then_some(())
    })
    .unwrap();
}

/// Waits until the cluster is formed (see [`wait_formed`]) and every node knows the
/// controller and the leader of every offsets log (so FindCoordinator has an answer: a client
/// such as kafka-python's admin does not retry COORDINATOR_NOT_AVAILABLE).
pub fn wait_ready(nodes: &[Broker]) {
    wait_formed(&bootstrap(nodes), nodes.len());
    for n in nodes {
        foundation::wait::until(
            Duration::from_secs(60),
            "the controller and every coordinator",
            || {
                let v = status(n)?;
                (v["controller"].as_i64().is_some_and(|c| c > 0)
                    && v["offsets_logs"]
                        .as_array()?
                        .iter()
                        .all(|l| l["leader"].as_i64().is_some_and(|c| c > 0)))
                .then_some(())
            },
        )
        .unwrap();
    }
}

/// Creates `topic` with `partitions` partitions of `replicas` replicas, retrying while the
/// controller is being elected; then waits until every partition has a leader.
pub async fn create_topic(
    addr: &str,
    topic: &str,
    partitions: i32,
    replicas: i32,
) -> BTreeMap<i32, (i32, usize)> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", addr);
    // librdkafka's own account, to look into a failure: RDKAFKA_DEBUG=admin,metadata,broker.
    if let Ok(d) = std::env::var("RDKAFKA_DEBUG") {
        config
            .set("debug", d)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    let admin: AdminClient<Stamped> = config
        .create_with_context(Stamped(Instant::now()))
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = admin
            .create_topics(
                &[NewTopic::new(
                    topic,
                    partitions,
                    TopicReplication::Fixed(replicas),
                )],
                &opts,
            )
            .await;
        match res.as_ref().map(Vec::as_slice) {
            Ok([Ok(_)] | [Err((_, RDKafkaErrorCode::TopicAlreadyExists))]) => break,
            other => assert!(Instant::now() < deadline, "CreateTopics: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    foundation::wait::until(
        Duration::from_secs(60),
        "every partition to have a leader",
        || {
            let p = placement(&probe, topic);
            (p.len() == partitions as usize && p.values().all(|(l, _)| *l > 0)).then_some(p)
        },
    )
    .unwrap()
}

/// `partition -> (leader, replica count)` from a Metadata request.
pub fn placement(c: &BaseConsumer, topic: &str) -> BTreeMap<i32, (i32, usize)> {
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return BTreeMap::new();
    };
    md.topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), (p.leader(), p.replicas().len())))
        .collect()
}

/// `/api/cluster` of one node.
pub fn status(node: &Broker) -> Option<serde_json::Value> {
    foundation::http::json(&format!("127.0.0.1:{}", node.http), "GET", "/api/cluster").ok()
}

/// The leader of `topic`/`partition` as `node` sees it (its `/api/cluster`).
pub fn leader_seen_by(node: &Broker, topic: &str, partition: i32) -> Option<i64> {
    let v = status(node)?;
    v["partitions"]
        .as_array()?
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == partition)
        .and_then(|p| p["leader"].as_i64())
        .filter(|l| *l > 0)
}

/// `(partition -> (log_start, high_watermark, bytes, crc32c))` of `topic` on one node, from
/// `/api/cluster/digests`.
pub fn digests(node: &Broker, topic: &str) -> Option<BTreeMap<i64, (i64, i64, u64, u64)>> {
    let v =
        foundation::http::json(&format!("127.0.0.1:{}", node.http), "GET", "/api/cluster/digests").ok()?;
    v["partitions"]
        .as_array()?
        .iter()
        .filter(|p| p["topic"] == topic)
        .map(|p| {
            Some((
                p["partition"].as_i64()?,
                (
                    p["log_start"].as_i64()?,
                    p["high_watermark"].as_i64()?,
                    p["bytes"].as_u64()?,
                    p["crc32c"].as_u64()?,
                ),
            ))
        })
        .collect()
}

/// Waits until every node holds all `partitions` of `topic` with the same committed log,
/// byte for byte (same start, end, length and CRC32C); returns the common digest.
pub fn wait_replicas_agree(
    nodes: &[Broker],
    topic: &str,
    partitions: usize,
) -> BTreeMap<i64, (i64, i64, u64, u64)> {
    let mut last = Vec::new();
    let r = foundation::wait::until(Duration::from_secs(60), "the replicas to agree", || {
        last = nodes.iter().map(|n| digests(n, topic)).collect();
        let first = last.first()?.clone()?;
        (first.len() == partitions && last.iter().all(|d| d.as_ref() == Some(&first))).then_some(first)
    });
    r.unwrap_or_else(|e| panic!("{e}: {last:#?}"))
}

/// librdkafka's log lines on stderr, stamped with the seconds since the client started.
pub struct Stamped(pub Instant);

impl rdkafka::ClientContext for Stamped {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, fac: &str, line: &str) {
        eprintln!("[{:9.3}] rdkafka {fac}: {line}", self.0.elapsed().as_secs_f64());
    }
}

/// One acknowledged record.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Partition.
    pub partition: i32,
    /// Offset it was acknowledged at.
    pub offset: i64,
    /// Its value.
    pub value: String,
    /// When it was handed to the producer.
    pub sent: Instant,
    /// When the acknowledgement arrived.
    pub at: Instant,
}

/// What a [`Feeder`] saw.
#[derive(Debug, Default)]
pub struct Fed {
    /// Acknowledgements, in the order they arrived.
    pub acks: Vec<Ack>,
    /// Values whose delivery failed, and why.
    pub failed: Vec<(String, String)>,
    /// Why the feed stopped before it was told to: a record the producer refused to queue
    /// (with the producer's fatal error, if it has one).
    pub refused: Option<String>,
}

/// Produces to every partition of a topic in turn, a record about every millisecond, until
/// stopped, recording each acknowledgement and failure; at most `IN_FLIGHT` records wait for
/// their report at once (so a stall stops the feed rather than growing a queue).
pub struct Feeder {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    /// What it has seen so far.
    pub fed: Arc<Mutex<Fed>>,
}

const IN_FLIGHT: u32 = 5_000;

impl Feeder {
    /// Starts feeding `topic` (`partitions` partitions) through `producer`.
    pub fn start<C: rdkafka::ClientContext + 'static>(
        producer: FutureProducer<C>,
        topic: &str,
        partitions: i32,
    ) -> Feeder {
        let stop = Arc::new(AtomicBool::new(false));
        let fed = Arc::new(Mutex::new(Fed::default()));
        let (s, f, topic) = (stop.clone(), fed.clone(), topic.to_string());
        let task = tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT as usize));
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                let permit = permits.clone().acquire_owned().await.expect("semaphore");
                let value = format!("v{i}");
                let partition = (i % partitions as u64) as i32;
                let sent = producer.send_result(
                    FutureRecord::<(), _>::to(&topic)
                        .partition(partition)
                        .payload(&value),
                );
                let delivery = match sent {
                    Ok(d) => d,
                    Err((e, _)) => {
                        drop(permit);
                        // The local queue is full: wait a little and send the same value again.
                        if matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                        ) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        // Anything else ends the feed, and says why to whoever waits on it.
                        f.lock().unwrap().refused = Some(format!(
                            "{value} was not queued: {e} (the producer's fatal error: {:?})",
                            rdkafka::producer::Producer::client(&producer).fatal_error()
                        ));
                        break;
                    }
                };
                i += 1;
                let sent = Instant::now();
                let f = f.clone();
                tokio::spawn(async move {
                    let report = delivery.await;
                    let at = Instant::now();
                    let mut fed = f.lock().unwrap();
                    match report {
                        Ok(Ok(d)) => fed.acks.push(Ack {
                            partition: d.partition,
                            offset: d.offset,
                            value,
                            sent,
                            at,
                        }),
                        Ok(Err((e, _))) => fed.failed.push((value, e.to_string())),
                        Err(_) => fed.failed.push((value, "the producer went away".into())),
                    }
                    drop(permit);
                });
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Every report is in once all permits are back.
            let _all = permits.acquire_many(IN_FLIGHT).await.expect("semaphore");
        });
        Feeder { stop, task, fed }
    }

    /// What went wrong so far, for a failure message: why the feed stopped on its own, and
    /// how many deliveries failed (the first few, with why).
    pub fn trouble(&self) -> String {
        let fed = self.fed.lock().unwrap();
        format!(
            "feed stopped on its own: {}; {} deliveries failed, first: {:?}",
            fed.refused.as_deref().unwrap_or("no"),
            fed.failed.len(),
            &fed.failed[..fed.failed.len().min(3)]
        )
    }

    /// Acknowledgements so far.
    pub fn acked(&self) -> usize {
        self.fed.lock().unwrap().acks.len()
    }

    /// When a record handed over after `t` was first acknowledged on `partition`, if one
    /// has been: `t` plus the produce stall, when `t` is the moment of a fault.
    pub fn first_ack_after(&self, partition: i32, t: Instant) -> Option<Instant> {
        let fed = self.fed.lock().unwrap();
        fed.acks
            .iter()
            .rev()
            .take_while(|a| a.at > t)
            .filter(|a| a.partition == partition && a.sent > t)
            .map(|a| a.at)
            .min()
    }

    /// The highest offset acknowledged on each partition so far.
    pub fn high_offsets(&self) -> HashMap<i32, i64> {
        let mut out = HashMap::new();
        for a in &self.fed.lock().unwrap().acks {
            let e = out.entry(a.partition).or_insert(a.offset);
            *e = (*e).max(a.offset);
        }
        out
    }

    /// Stops feeding and waits for every outstanding report.
    pub async fn stop(self) -> Fed {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the feeder panicked");
        std::mem::take(&mut *self.fed.lock().unwrap())
    }
}

/// How long each of `stalls` was: p50, p99 and max, for a closing line.
pub fn stall_summary(stalls: &[Duration]) -> String {
    let mut s = stalls.to_vec();
    s.sort();
    let at = |q: f64| s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1];
    format!(
        "{} stalls: p50 {:?}, p99 {:?}, max {:?}",
        s.len(),
        at(0.50),
        at(0.99),
        s[s.len() - 1]
    )
}

/// Reads `topic` from the beginning as group `group` until `want` records have arrived
/// (60 s at most), failing on any offset read twice; commits, and returns `(partition,
/// offset) -> value`.
pub fn read_all(addr: &str, topic: &str, group: &str, want: usize) -> BTreeMap<(i32, i64), String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).unwrap();
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "read {} of {want} records in 60 s",
            got.len()
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            // librdkafka reports a dead broker's connection as an error; it carries on.
            let Ok(m) = m else {
                continue;
            };
            let value = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
            assert!(
                got.insert((m.partition(), m.offset()), value).is_none(),
                "read {}/{} twice",
                m.partition(),
                m.offset()
            );
        }
    }
    // What was read, committed explicitly (the next offset of each partition). A commit can
    // meet a rebalance: when the group's coordinator moves (a node died, or the leader
    // balancer hands the offsets log back to its preferred node), the new coordinator knows
    // the group's offsets but not its members, and answers ILLEGAL_GENERATION until the
    // consumer has joined again, as Kafka's does for a group it does not know. Polling serves
    // the rejoin; records delivered again meanwhile were read already and are not counted.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o) in got.keys() {
        let e = next.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, o) in &next {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Offset(*o))
            .expect("an offset");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.commit(&tpl, CommitMode::Sync) {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "commit: {e}");
                let _ = c.poll(Duration::from_millis(200));
            }
        }
    }
    got
}

/// Checks what was read against what a [`Feeder`] saw: every acknowledged record at its
/// acknowledged offset, no value twice, and nothing else but records whose delivery failed
/// (a write that was never acknowledged may or may not have been committed).
pub fn check_exactly_once(fed: &Fed, read: &BTreeMap<(i32, i64), String>) {
    for a in &fed.acks {
        assert_eq!(
            read.get(&(a.partition, a.offset)),
            Some(&a.value),
            "{} acknowledged at {}/{}",
            a.value,
            a.partition,
            a.offset
        );
    }
    let mut seen = std::collections::HashSet::new();
    for ((p, o), v) in read {
        assert!(seen.insert(v), "{v} stored twice (second at {p}/{o})");
    }
    let failed: std::collections::HashSet<&String> = fed.failed.iter().map(|(v, _)| v).collect();
    let acked: std::collections::HashSet<(i32, i64)> =
        fed.acks.iter().map(|a| (a.partition, a.offset)).collect();
    let extra: Vec<_> = read
        .iter()
        .filter(|(k, v)| !failed.contains(v) && !acked.contains(k))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "records nobody produced or acknowledged: {extra:?}"
    );
}

/// Sends one Produce request (v7, `acks=all`, the broker waits up to `timeout_ms`) with one
/// record to `topic`/`partition` straight to the broker at `addr`, with no client routing
/// around it, and returns the partition's error code (0: acknowledged).
pub fn produce_raw(
    addr: &str,
    topic: &str,
    partition: i32,
    value: &str,
    timeout_ms: i32,
) -> std::io::Result<i16> {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    const VERSION: i16 = 7;
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: foundation::time::now_ms(),
        key: None,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Default::default(),
    };
    let mut records = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut records,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(std::io::Error::other)?;
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records.freeze()))])]);
    let resp: ProduceResponse =
        raw_request(addr, ApiKey::Produce, VERSION, &req, timeout_ms as u64 + 15_000)?;
    resp.responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .map(|p| p.error_code)
        .ok_or_else(|| std::io::Error::other("an empty Produce response"))
}

/// Sends one request on a connection of its own and reads the answer (waiting up to
/// `timeout_ms` for it).
pub fn raw_request<Req, Resp>(
    addr: &str,
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    req: &Req,
    timeout_ms: u64,
) -> std::io::Result<Resp>
where
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable,
{
    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::{RequestHeader, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use std::io::{Read, Write};

    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("raw-request")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, key.request_header_version(version))
        .map_err(std::io::Error::other)?;
    req.encode(&mut body, version).map_err(std::io::Error::other)?;
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    let mut sock = std::net::TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_millis(timeout_ms)))?;
    sock.write_all(&frame)?;
    let mut len = [0u8; 4];
    sock.read_exact(&mut len)?;
    let mut buf = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    sock.read_exact(&mut buf)?;
    let mut buf = Bytes::from(buf);
    ResponseHeader::decode(&mut buf, key.response_header_version(version)).map_err(std::io::Error::other)?;
    Resp::decode(&mut buf, version).map_err(std::io::Error::other)
}

/// InitProducerId (v4, no transactional id) asked of the broker at `addr`: `(error code,
/// producer id)`.
pub fn init_producer_id_raw(addr: &str) -> std::io::Result<(i16, i64)> {
    use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse};
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id((-1).into())
        .with_producer_epoch(-1);
    let resp: InitProducerIdResponse = raw_request(addr, ApiKey::InitProducerId, 4, &req, 20_000)?;
    Ok((resp.error_code, resp.producer_id.0))
}

/// `((topic, partition), error code)`.
pub type PartitionError = ((String, i32), i32);

/// OffsetDelete through librdkafka's own admin API (`rd_kafka_DeleteConsumerGroupOffsets`:
/// the rdkafka crate does not wrap it): forgets `group`'s committed offsets of `partitions`.
/// Returns the group-level error (0: none) and each partition's error code.
pub fn delete_group_offsets_librdkafka(
    addr: &str,
    group: &str,
    partitions: &[(&str, i32)],
) -> (i32, Vec<PartitionError>) {
    use rdkafka::bindings as rd;
    use std::ffi::{CStr, CString};

    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("admin client");
    let rk = admin.inner().native_ptr();
    let group_c = CString::new(group).unwrap();
    // SAFETY: every pointer passed is live for the call (the list, the request and the queue
    // are destroyed below, after the last use); the result event is read before it is
    // destroyed, and what it points to is copied out first.
    unsafe {
        let list = rd::rd_kafka_topic_partition_list_new(partitions.len() as i32);
        for (t, p) in partitions {
            let t = CString::new(*t).unwrap();
            rd::rd_kafka_topic_partition_list_add(list, t.as_ptr(), *p);
        }
        let mut req = rd::rd_kafka_DeleteConsumerGroupOffsets_new(group_c.as_ptr(), list);
        rd::rd_kafka_topic_partition_list_destroy(list);
        let queue = rd::rd_kafka_queue_new(rk);
        let opts = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DELETECONSUMERGROUPOFFSETS,
        );
        let mut errstr = [0 as std::os::raw::c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(opts, 20_000, errstr.as_mut_ptr(), errstr.len());
        rd::rd_kafka_DeleteConsumerGroupOffsets(rk, &mut req, 1, opts, queue);
        let ev = rd::rd_kafka_queue_poll(queue, 30_000);
        assert!(!ev.is_null(), "no DeleteConsumerGroupOffsets result in 30 s");
        let request_err = rd::rd_kafka_event_error(ev);
        let res = rd::rd_kafka_event_DeleteConsumerGroupOffsets_result(ev);
        let mut out = (request_err as i32, Vec::new());
        if !res.is_null() {
            let mut n = 0usize;
            let groups = rd::rd_kafka_DeleteConsumerGroupOffsets_result_groups(res, &mut n);
            for i in 0..n {
                let g = *groups.add(i);
                let e = rd::rd_kafka_group_result_error(g);
                if !e.is_null() {
                    out.0 = rd::rd_kafka_error_code(e) as i32;
                }
                let parts = rd::rd_kafka_group_result_partitions(g);
                if !parts.is_null() {
                    for j in 0..(*parts).cnt as usize {
                        let e = &*(*parts).elems.add(j);
                        let topic = CStr::from_ptr(e.topic).to_string_lossy().into_owned();
                        out.1.push(((topic, e.partition), e.err as i32));
                    }
                }
            }
        }
        rd::rd_kafka_event_destroy(ev);
        rd::rd_kafka_AdminOptions_destroy(opts);
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_DeleteConsumerGroupOffsets_destroy(req);
        out
    }
}

/// OffsetDelete as librdkafka sends it, on the broker or cluster at `addr`: a group with
/// offsets committed on `<tag>-a` and `<tag>-b` and a member subscribed to `<tag>-a` keeps
/// that topic's offset (`GROUP_SUBSCRIBED_TO_TOPIC`) and forgets the other's; an unknown
/// group is `GROUP_ID_NOT_FOUND`. `replicas`: the topics' replication factor.
pub async fn offset_delete_through_librdkafka(addr: &str, tag: &str, replicas: i32) {
    let (a, b, group) = (format!("{tag}-a"), format!("{tag}-b"), format!("{tag}-group"));
    create_topic(addr, &a, 1, replicas).await;
    create_topic(addr, &b, 1, replicas).await;
    let consumer = |subscribe: bool| {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        if subscribe {
            c.subscribe(&[&a]).expect("subscribe");
        }
        c
    };
    let member = consumer(true);
    foundation::wait::until(Duration::from_secs(60), "the member's assignment", || {
        let _ = member.poll(Duration::from_millis(100));
        member.assignment().ok().filter(|l| l.count() == 1)
    })
    .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&a, 0, rdkafka::Offset::Offset(0))
        .unwrap();
    tpl.add_partition_offset(&b, 0, rdkafka::Offset::Offset(0))
        .unwrap();
    foundation::wait::until(Duration::from_secs(30), "the commit", || {
        let _ = member.poll(Duration::from_millis(50));
        member.commit(&tpl, CommitMode::Sync).ok()
    })
    .unwrap();

    let (group_err, parts) = delete_group_offsets_librdkafka(addr, &group, &[(&a, 0), (&b, 0)]);
    assert_eq!(group_err, 0, "{parts:?}");
    let code = |t: &str| parts.iter().find(|((pt, _), _)| pt == t).map(|(_, e)| *e);
    assert_eq!(
        code(&a),
        Some(RDKafkaErrorCode::GroupSubscribedToTopic as i32),
        "{parts:?}"
    );
    assert_eq!(code(&b), Some(0), "{parts:?}");
    let committed = member
        .committed_offsets(tpl.clone(), Duration::from_secs(10))
        .expect("OffsetFetch");
    let at = |t: &str| committed.find_partition(t, 0).map(|e| e.offset());
    assert_eq!(
        at(&a),
        Some(rdkafka::Offset::Offset(0)),
        "the subscribed topic's offset stays"
    );
    assert_eq!(
        at(&b),
        Some(rdkafka::Offset::Invalid),
        "the other topic's offset is gone"
    );
    drop(member);

    let (group_err, _) = delete_group_offsets_librdkafka(addr, &format!("{tag}-nobody"), &[(&a, 0)]);
    assert_eq!(group_err, RDKafkaErrorCode::GroupIdNotFound as i32);
}
