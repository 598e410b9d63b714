//! A lean Kafka consumer: a member of a consumer group, over the Kafka protocol
//! (kafka-protocol's messages), that hands each fetched record to its [`Handler`] as slices of
//! the fetched batch ([`records`]).
//!
//! Why not librdkafka: the device monitor reads every record the cloud ingests. Through
//! librdkafka that cost ~1.4 µs of CPU per record (a message object, its headers parsed and an
//! op queued per record, across two threads), which on a small cloud node slowed the bridge's
//! drain by a third (BENCHMARKS.md). Walking the batches in place costs a fraction of that.
//!
//! What it does, as Kafka's own clients do:
//! - **group membership**: FindCoordinator, JoinGroup (protocol type `consumer`, the `range`
//!   assignor; the leader computes every member's assignment), SyncGroup, Heartbeat, and
//!   LeaveGroup when stopped; a rebalance, a lost membership or a changed partition count
//!   makes it join again;
//! - **fetching**: Metadata gives each partition's leader; one Fetch per leader is kept in
//!   flight (the next is sent before the last is applied); `read_committed` (aborted
//!   transactions and markers are skipped); a partition without a position starts at its
//!   earliest offset (ListOffsets), as does one whose offset fell out of range; a leader change
//!   or a lost connection refreshes the metadata and goes on;
//! - **offsets**: committed every [`Config::commit_interval`] and when leaving, so Kafka's
//!   tools show the group's lag.
//!
//! Versions: Metadata v9, FindCoordinator v3, JoinGroup v5, SyncGroup v3, Heartbeat v3,
//! LeaveGroup v3, OffsetCommit v7, ListOffsets v5, Fetch v11 — served by this broker and by
//! Kafka from 2.4 through 4.x. Plaintext only (TLS and SASL: the librdkafka feed).

pub mod conn;
pub mod group;
mod membership;
pub mod records;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;

use conn::Conn;
pub use records::{RecordView, RecordsError, Walked};

const METADATA_V: i16 = 9;
const FIND_COORDINATOR_V: i16 = 3;
const JOIN_V: i16 = 5;
const SYNC_V: i16 = 3;
const HEARTBEAT_V: i16 = 3;
const LEAVE_V: i16 = 3;
const COMMIT_V: i16 = 7;
const LIST_OFFSETS_V: i16 = 5;
const FETCH_V: i16 = 11;

/// How long a request other than JoinGroup and Fetch may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Between attempts after an error.
const BACKOFF: Duration = Duration::from_secs(1);

// Kafka error codes this consumer acts on.
const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const REPLICA_NOT_AVAILABLE: i16 = 9;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const KAFKA_STORAGE_ERROR: i16 = 56;
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;
const MEMBER_ID_REQUIRED: i16 = 79;

/// What and how the consumer reads.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of brokers to ask first.
    pub bootstrap: Vec<String>,
    /// The consumer group.
    pub group_id: String,
    /// The client id the brokers see.
    pub client_id: String,
    /// The topics subscribed to (those that do not exist yet are picked up when they do).
    pub topics: Vec<String>,
    /// The group's session timeout: a member silent this long is dropped.
    pub session_timeout: Duration,
    /// Time the other members have to rejoin in a rebalance.
    pub rebalance_timeout: Duration,
    /// Between heartbeats.
    pub heartbeat_interval: Duration,
    /// Between offset commits.
    pub commit_interval: Duration,
    /// Between metadata refreshes (new topics and partitions, moved leaders).
    pub metadata_interval: Duration,
    /// How long a broker may hold a fetch that has less than `min_bytes` to return.
    pub max_wait: Duration,
    /// The bytes a fetch waits for (up to `max_wait`).
    pub min_bytes: i32,
    /// Most bytes one fetch response may carry.
    pub fetch_max_bytes: i32,
    /// Most bytes of one partition in a fetch response.
    pub partition_max_bytes: i32,
    /// TLS and SASL (none: plaintext).
    pub login: Option<std::sync::Arc<conn::Login>>,
}

impl Config {
    /// Defaults for a consumer of `topics` in `group_id`.
    pub fn new(bootstrap: &str, group_id: &str, topics: Vec<String>) -> Config {
        Config {
            bootstrap: bootstrap
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            group_id: group_id.to_string(),
            client_id: "iot-consumer".into(),
            topics,
            session_timeout: Duration::from_secs(30),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(3),
            commit_interval: Duration::from_secs(5),
            metadata_interval: Duration::from_secs(5),
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            fetch_max_bytes: 16 << 20,
            partition_max_bytes: 1 << 20,
            login: None,
        }
    }
}

/// One partition's records in a fetch response.
#[derive(Debug)]
pub struct Fetched<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The offset fetched from (records below it in the first batch are not handed over).
    pub fetch_offset: i64,
    records: &'a [u8],
    aborted: &'a [(i64, i64)],
}

impl Fetched<'_> {
    /// Calls `f` with each record (see [`records::walk`]).
    pub fn walk(
        &self,
        scratch: &mut Vec<u8>,
        f: impl FnMut(RecordView<'_>),
    ) -> Result<Walked, (Walked, RecordsError)> {
        records::walk(self.records, self.fetch_offset, self.aborted, scratch, f)
    }
}

/// What the consumer reads for.
pub trait Handler {
    /// Where to start a partition just assigned: an offset, or `None` for its earliest.
    fn start(&mut self, topic: &str, partition: i32) -> Option<i64>;
    /// One partition's fetched records; walk them with [`Fetched::walk`].
    fn fetched(&mut self, f: &Fetched<'_>) -> Result<Walked, (Walked, RecordsError)>;
    /// After each fetch of a partition: the offset read next and the partition's end (its last
    /// stable offset, else its high watermark).
    fn progress(&mut self, topic: &str, partition: i32, next: i64, end: i64);
    /// The consumer's state in words: "reading N partitions", "waiting for the topics", an
    /// error it is retrying after.
    fn state(&mut self, s: String);
    /// The partitions the group gave this member (after each join; [`Handler::start`] is
    /// called for each of them next).
    fn assigned(&mut self, _parts: &[(String, i32)]) {}
}

/// Reads as `cfg` says into `h` until `stop` turns true, then commits and leaves the group.
pub async fn run<H: Handler>(cfg: Config, h: &mut H, mut stop: watch::Receiver<bool>) {
    let mut c = Consumer::new(cfg);
    loop {
        if *stop.borrow() {
            break;
        }
        let r = tokio::select! {
            r = c.session(h) => r,
            _ = stop.changed() => Ok(Exit::Stop),
        };
        match r {
            Ok(Exit::Stop) => break,
            Ok(Exit::Rejoin) => continue,
            Ok(Exit::Wait(why)) => {
                h.state(why);
            }
            Err(e) => {
                h.state(format!("error: {e:#}"));
                tracing::debug!(error = %format!("{e:#}"), "consumer");
                c.forget_connections();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(BACKOFF) => {}
            _ = stop.changed() => break,
        }
    }
    h.state("stopping".into());
    // Bounded: the coordinator may be going down with this process.
    let _ = tokio::time::timeout(Duration::from_secs(3), c.leave()).await;
    h.state("stopped".into());
}

/// Why a session ended.
enum Exit {
    Stop,
    Rejoin,
    Wait(String),
}

#[derive(Debug, Clone, Copy)]
struct Part {
    /// The offset to fetch next; `None` until the earliest is known.
    next: Option<i64>,
    /// The last offset committed.
    committed: i64,
    /// Not fetched until this moment (an error) or the next metadata refresh (a leader change).
    paused_until: Option<Instant>,
    stale_leader: bool,
}

struct Consumer {
    cfg: Config,
    /// Node id → `host:port`.
    brokers: BTreeMap<i32, String>,
    /// Partition → leader node.
    leaders: HashMap<(String, i32), i32>,
    /// Subscribed topics that exist → partition count.
    counts: BTreeMap<String, i32>,
    meta: Option<Conn>,
    coordinator: Option<Conn>,
    coordinator_addr: Option<String>,
    member_id: String,
    generation: i32,
    /// The partition counts the current assignment was made for.
    joined: BTreeMap<String, i32>,
    assigned: BTreeMap<(String, i32), Part>,
    /// Per node, a connection for ListOffsets.
    control: HashMap<i32, Conn>,
    /// Per node, the idle fetch connection.
    fetch_conns: HashMap<i32, Conn>,
    /// Nodes not to be fetched from until then (a failed connection).
    node_backoff: HashMap<i32, Instant>,
}

type FetchDone = (i32, Option<Conn>, anyhow::Result<FetchResponse>);

impl Consumer {
    fn new(cfg: Config) -> Consumer {
        Consumer {
            cfg,
            brokers: BTreeMap::new(),
            leaders: HashMap::new(),
            counts: BTreeMap::new(),
            meta: None,
            coordinator: None,
            coordinator_addr: None,
            member_id: String::new(),
            generation: -1,
            joined: BTreeMap::new(),
            assigned: BTreeMap::new(),
            control: HashMap::new(),
            fetch_conns: HashMap::new(),
            node_backoff: HashMap::new(),
        }
    }

    fn forget_connections(&mut self) {
        self.meta = None;
        self.coordinator = None;
        self.coordinator_addr = None;
        self.control.clear();
        self.fetch_conns.clear();
    }

    /// Joins the group and reads until a rebalance or an error (a stop drops it).
    async fn session<H: Handler>(&mut self, h: &mut H) -> anyhow::Result<Exit> {
        self.metadata(&self.cfg.topics.clone()).await?;
        if self.counts.is_empty() {
            return Ok(Exit::Wait(format!(
                "waiting for the topics ({})",
                self.cfg.topics.join(", ")
            )));
        }
        h.state("joining the group".into());
        self.join().await?;
        self.assigned_start(h);
        h.state(format!("reading {} partitions", self.assigned.len()));
        self.read(h).await
    }

    /// Asks any broker for the metadata of `topics`: brokers, partition counts, leaders.
    async fn metadata(&mut self, topics: &[String]) -> anyhow::Result<()> {
        let req = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect(),
            ))
            .with_allow_auto_topic_creation(false);
        let mut tried = Vec::new();
        let mut last_error = String::from("no connection made");
        if self.meta.as_ref().is_some_and(|c| !c.is_idle()) {
            self.meta = None;
        }
        let resp = loop {
            if self.meta.is_none() {
                let candidates: Vec<String> = self
                    .brokers
                    .values()
                    .chain(self.cfg.bootstrap.iter())
                    .filter(|a| !tried.contains(*a))
                    .cloned()
                    .collect();
                let Some(addr) = candidates.first() else {
                    // The last broker's own words (a refused login says why).
                    bail!("no broker answered ({}): {last_error}", tried.join(", "));
                };
                tried.push(addr.clone());
                match Conn::connect(addr, &self.cfg.client_id, self.cfg.login.as_deref()).await {
                    Ok(c) => self.meta = Some(c),
                    Err(e) => {
                        tracing::debug!(error = %format!("{e:#}"), "consumer metadata");
                        last_error = format!("{e:#}");
                        continue;
                    }
                }
            }
            let Some(conn) = self.meta.as_mut() else { continue };
            match conn.call(&req, METADATA_V, REQUEST_TIMEOUT).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "consumer metadata");
                    last_error = format!("{e:#}");
                    self.meta = None;
                }
            }
        };
        self.brokers = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        for t in &resp.topics {
            let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
                continue;
            };
            if t.error_code != 0 || t.partitions.is_empty() {
                self.counts.remove(&name);
                continue;
            }
            self.counts.insert(name.clone(), t.partitions.len() as i32);
            for p in &t.partitions {
                self.leaders
                    .insert((name.clone(), p.partition_index), p.leader_id.0);
            }
        }
        for p in self.assigned.values_mut() {
            p.stale_leader = false;
        }
        Ok(())
    }

    fn assigned_start<H: Handler>(&mut self, h: &mut H) {
        let parts: Vec<(String, i32)> = self.assigned.keys().cloned().collect();
        h.assigned(&parts);
        for ((t, p), part) in &mut self.assigned {
            part.next = h.start(t, *p);
        }
    }

    /// Fetches from every leader until a rebalance or an error.
    async fn read<H: Handler>(&mut self, h: &mut H) -> anyhow::Result<Exit> {
        let mut in_flight: FuturesUnordered<futures::future::BoxFuture<'static, FetchDone>> =
            FuturesUnordered::new();
        let mut busy: HashSet<i32> = HashSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut heartbeat_at, mut commit_at, mut metadata_at) =
            (Instant::now(), Instant::now(), Instant::now());
        self.resolve_earliest().await;
        loop {
            // A fetch in flight to every leader that has partitions to fetch.
            let nodes: HashSet<i32> = self.fetchable().into_keys().collect();
            for node in nodes {
                if !busy.contains(&node) {
                    if let Some(f) = self.send_fetch(node).await {
                        busy.insert(node);
                        in_flight.push(f);
                    }
                }
            }
            tokio::select! {
                Some((node, conn, r)) = in_flight.next(), if !in_flight.is_empty() => {
                    busy.remove(&node);
                    match r {
                        Ok(resp) => {
                            if let Some(c) = conn {
                                self.fetch_conns.insert(node, c);
                            }
                            // The next fetch goes out before this one is applied.
                            let asked = self.advance(node, &resp);
                            if let Some(f) = self.send_fetch(node).await {
                                busy.insert(node);
                                in_flight.push(f);
                            }
                            self.apply(h, resp, &asked);
                        }
                        Err(e) => {
                            h.state(format!("error: fetching from node {node}: {e:#}"));
                            self.node_backoff.insert(node, Instant::now() + BACKOFF);
                            self.mark_node_stale(node);
                            metadata_at = Instant::now() - self.cfg.metadata_interval;
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now >= heartbeat_at {
                        heartbeat_at = now + self.cfg.heartbeat_interval;
                        if let Some(exit) = self.heartbeat().await? {
                            let _ = self.commit().await;
                            return Ok(exit);
                        }
                    }
                    if now >= commit_at {
                        commit_at = now + self.cfg.commit_interval;
                        if let Some(exit) = self.commit().await? {
                            return Ok(exit);
                        }
                    }
                    let stale = self.assigned.values().any(|p| p.stale_leader);
                    if stale || now >= metadata_at {
                        metadata_at = now + self.cfg.metadata_interval;
                        self.metadata(&self.cfg.topics.clone()).await?;
                        if self.counts != self.joined {
                            let _ = self.commit().await;
                            return Ok(Exit::Rejoin);
                        }
                    }
                    self.resolve_earliest().await;
                    let reading = self.assigned.values().filter(|p| p.next.is_some()).count();
                    if reading == self.assigned.len() {
                        h.state(format!("reading {} partitions", self.assigned.len()));
                    }
                }
            }
        }
    }

    /// Per leader node, the partitions to fetch now and from where.
    fn fetchable(&self) -> HashMap<i32, Vec<(String, i32, i64)>> {
        let now = Instant::now();
        let mut out: HashMap<i32, Vec<(String, i32, i64)>> = HashMap::new();
        for ((t, p), part) in &self.assigned {
            let Some(next) = part.next else { continue };
            if part.stale_leader || part.paused_until.is_some_and(|u| u > now) {
                continue;
            }
            let Some(&leader) = self.leaders.get(&(t.clone(), *p)) else {
                continue;
            };
            if leader < 0 || self.node_backoff.get(&leader).is_some_and(|&u| u > now) {
                continue;
            }
            out.entry(leader).or_default().push((t.clone(), *p, next));
        }
        out
    }

    /// Sends the next fetch to `node`; the future of its answer, or `None` if it has
    /// nothing to fetch or could not be reached.
    async fn send_fetch(&mut self, node: i32) -> Option<futures::future::BoxFuture<'static, FetchDone>> {
        let parts = self.fetchable().remove(&node)?;
        let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
        for (t, p, next) in parts {
            topics.entry(t).or_default().push(
                FetchPartition::default()
                    .with_partition(p)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(next)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(self.cfg.partition_max_bytes),
            );
        }
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(self.cfg.max_wait.as_millis() as i32)
            .with_min_bytes(self.cfg.min_bytes)
            .with_max_bytes(self.cfg.fetch_max_bytes)
            .with_isolation_level(1)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        FetchTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let mut conn = match self.fetch_conns.remove(&node) {
            Some(c) => c,
            None => {
                let addr = self.brokers.get(&node)?.clone();
                match Conn::connect(&addr, &self.cfg.client_id, self.cfg.login.as_deref()).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(node, error = %format!("{e:#}"), "consumer fetch");
                        self.node_backoff.insert(node, Instant::now() + BACKOFF);
                        self.mark_node_stale(node);
                        return None;
                    }
                }
            }
        };
        if let Err(e) = conn.send(&req, FETCH_V).await {
            tracing::debug!(node, error = %format!("{e:#}"), "consumer fetch");
            self.node_backoff.insert(node, Instant::now() + BACKOFF);
            self.mark_node_stale(node);
            return None;
        }
        let wait = self.cfg.max_wait + REQUEST_TIMEOUT;
        Some(Box::pin(async move {
            match tokio::time::timeout(wait, conn.recv::<FetchRequest>()).await {
                Ok(Ok(r)) => (node, Some(conn), Ok(r)),
                Ok(Err(e)) => (node, None, Err(e)),
                Err(_) => (node, None, Err(anyhow!("no fetch answer within {wait:?}"))),
            }
        }))
    }

    fn mark_node_stale(&mut self, node: i32) {
        for ((t, p), part) in &mut self.assigned {
            if self.leaders.get(&(t.clone(), *p)) == Some(&node) {
                part.stale_leader = true;
            }
        }
    }

    /// Moves each partition of a fetch answer to where its records end (or back to unknown,
    /// pausing it, on an error), before they are applied; the offsets asked, per partition.
    fn advance(&mut self, node: i32, resp: &FetchResponse) -> HashMap<(String, i32), i64> {
        let mut asked = HashMap::new();
        let now = Instant::now();
        if resp.error_code != 0 {
            tracing::debug!(node, error = resp.error_code, "consumer fetch");
            self.node_backoff.insert(node, now + BACKOFF);
            return asked;
        }
        for t in &resp.responses {
            let topic = t.topic.0.to_string();
            for p in &t.partitions {
                let key = (topic.clone(), p.partition_index);
                let Some(part) = self.assigned.get_mut(&key) else {
                    continue;
                };
                let Some(from) = part.next else { continue };
                match p.error_code {
                    0 => {
                        asked.insert(key, from);
                        if let Some(n) = p.records.as_deref().and_then(records::next_offset) {
                            part.next = Some(n.max(from));
                        }
                    }
                    OFFSET_OUT_OF_RANGE => part.next = None,
                    UNKNOWN_TOPIC_OR_PARTITION
                    | LEADER_NOT_AVAILABLE
                    | NOT_LEADER_OR_FOLLOWER
                    | REPLICA_NOT_AVAILABLE
                    | KAFKA_STORAGE_ERROR
                    | FENCED_LEADER_EPOCH
                    | UNKNOWN_LEADER_EPOCH => part.stale_leader = true,
                    e => {
                        tracing::debug!(topic, partition = p.partition_index, error = e, "consumer fetch");
                        part.paused_until = Some(now + BACKOFF);
                    }
                }
            }
        }
        asked
    }

    /// Hands a fetch answer's records to `h`.
    fn apply<H: Handler>(&mut self, h: &mut H, resp: FetchResponse, asked: &HashMap<(String, i32), i64>) {
        let mut aborted = Vec::new();
        for t in &resp.responses {
            let topic = t.topic.0.as_str();
            for p in &t.partitions {
                let key = (topic.to_string(), p.partition_index);
                let Some(&from) = asked.get(&key) else { continue };
                let records: &[u8] = p.records.as_deref().unwrap_or(&[]);
                aborted.clear();
                aborted.extend(
                    p.aborted_transactions
                        .iter()
                        .flatten()
                        .map(|a| (a.producer_id.0, a.first_offset)),
                );
                if !records.is_empty() {
                    let f = Fetched {
                        topic,
                        partition: p.partition_index,
                        fetch_offset: from,
                        records,
                        aborted: &aborted,
                    };
                    if let Err((_, e)) = h.fetched(&f) {
                        tracing::debug!(topic, partition = p.partition_index, error = %e, "consumer records");
                    }
                }
                let end = if p.last_stable_offset >= 0 {
                    p.last_stable_offset
                } else {
                    p.high_watermark
                };
                if let Some(next) = self.assigned.get(&key).and_then(|x| x.next) {
                    h.progress(topic, p.partition_index, next, end);
                }
            }
        }
    }

    /// Finds the earliest offset of every partition that has no position.
    async fn resolve_earliest(&mut self) {
        let mut by_node: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        for ((t, p), part) in &self.assigned {
            if part.next.is_none() && !part.stale_leader {
                if let Some(&l) = self.leaders.get(&(t.clone(), *p)) {
                    if l >= 0 {
                        by_node.entry(l).or_default().push((t.clone(), *p));
                    }
                }
            }
        }
        for (node, parts) in by_node {
            match self.list_earliest(node, &parts).await {
                Ok(found) => {
                    for (k, off) in found {
                        if let Some(part) = self.assigned.get_mut(&k) {
                            part.next = Some(off);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(node, error = %format!("{e:#}"), "consumer list offsets");
                    self.control.remove(&node);
                    self.mark_node_stale(node);
                }
            }
        }
    }

    async fn list_earliest(
        &mut self,
        node: i32,
        parts: &[(String, i32)],
    ) -> anyhow::Result<Vec<((String, i32), i64)>> {
        let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
        for (t, p) in parts {
            topics.entry(t).or_default().push(
                ListOffsetsPartition::default()
                    .with_partition_index(*p)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(-2),
            );
        }
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t.to_string())))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        if self.control.get(&node).is_some_and(|c| !c.is_idle()) {
            self.control.remove(&node);
        }
        if !self.control.contains_key(&node) {
            let addr = self
                .brokers
                .get(&node)
                .ok_or_else(|| anyhow!("node {node} is not in the metadata"))?
                .clone();
            self.control.insert(
                node,
                Conn::connect(&addr, &self.cfg.client_id, self.cfg.login.as_deref()).await?,
            );
        }
        let conn = self
            .control
            .get_mut(&node)
            .ok_or_else(|| anyhow!("no connection"))?;
        let r = conn.call(&req, LIST_OFFSETS_V, REQUEST_TIMEOUT).await?;
        let mut out = Vec::new();
        for t in r.topics {
            for p in t.partitions {
                let key = (t.name.0.to_string(), p.partition_index);
                if p.error_code == 0 && p.offset >= 0 {
                    out.push((key, p.offset));
                } else if let Some(part) = self.assigned.get_mut(&key) {
                    part.stale_leader = true;
                }
            }
        }
        Ok(out)
    }
}
