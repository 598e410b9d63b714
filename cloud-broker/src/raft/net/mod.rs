//! The Raft transport between nodes: one TCP connection from each node to each peer, shared
//! by every group, frames tagged with the group.
//!
//! ```text
//! frame := len u32 (bytes after it) | kind u8 | group u64 | id u64 | payload (postcard)
//! ```
//! The first frame on a connection is `Hello { cluster, node }`; a peer of another cluster
//! name, or one claiming this node's id, is refused. Requests carry an id the response echoes,
//! so many groups' RPCs are in flight on one connection at once (besides openraft's RPCs, a
//! `Propose` hands a command to the node that leads its group); the writer coalesces frames
//! waiting to go into one write. A lost connection fails its in-flight RPCs as `Unreachable`
//! (openraft backs off and retries) and is redialled on the next RPC.
//!
//! Frames are bounded ([`MAX_FRAME`]); a frame over the limit, an unknown kind or a payload
//! that does not decode closes only that connection.

mod stream;

mod tls;
pub use tls::RaftTls;
use tls::{halves, Halves};

use std::collections::HashMap;
use std::future::Future;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::machine::{Applied, PartitionSnapshot, SnapshotBatches};
use super::{GroupRaft, NodeAddr, NodeId, TypeConfig};

/// Largest frame accepted (a snapshot travels in one frame).
pub const MAX_FRAME: usize = 256 << 20;
/// Frames queued per peer before RPCs wait.
const QUEUE: usize = 4096;

/// How long a new connection may take to say who it is.
const HELLO_DEADLINE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Hello = 0,
    Append = 1,
    Vote = 2,
    PreVote = 3,
    Snapshot = 4,
    Reply = 5,
    Failed = 6,
    Propose = 7,
    /// A node-level "are you there" (answered empty), so every node hears from every other
    /// even when no group has them talk (two followers of the same leaders).
    Ping = 8,
    /// A leader handing its group over: the target starts an election at once, the others
    /// stop honouring the old leader's lease (openraft's `handle_transfer_leader`).
    TransferLeader = 9,
    /// One request of a pipelined AppendEntries stream (see [`stream`]).
    StreamAppend = 10,
    /// A transaction coordinator asking a partition's leader to write a marker (through the
    /// partition's sequencer, which assigns its offset).
    Marker = 11,
}

/// A transaction marker to write (see [`crate::sm::partition::Partition::prepare_marker`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MarkerRpc {
    /// The transaction's producer id.
    pub producer_id: i64,
    /// Its epoch.
    pub epoch: i16,
    /// Commit, or abort.
    pub commit: bool,
    /// The marker's timestamp.
    pub timestamp: i64,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Hello,
            1 => Kind::Append,
            2 => Kind::Vote,
            3 => Kind::PreVote,
            4 => Kind::Snapshot,
            5 => Kind::Reply,
            6 => Kind::Failed,
            7 => Kind::Propose,
            8 => Kind::Ping,
            9 => Kind::TransferLeader,
            10 => Kind::StreamAppend,
            11 => Kind::Marker,
            _ => return None,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    cluster: String,
    node: NodeId,
}

/// A snapshot on the wire: its batches travel with it.
#[derive(Debug, Serialize, Deserialize)]
struct WireSnapshot {
    vote: VoteOf<TypeConfig>,
    meta: SnapshotMetaOf<TypeConfig>,
    state: Applied,
    batches: Vec<(i64, Vec<u8>)>,
}

struct Frame {
    kind: Kind,
    group: u64,
    id: u64,
    payload: Vec<u8>,
}

fn encode_frame(out: &mut Vec<u8>, f: &Frame) {
    let len = (1 + 8 + 8 + f.payload.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(f.kind as u8);
    out.extend_from_slice(&f.group.to_be_bytes());
    out.extend_from_slice(&f.id.to_be_bytes());
    out.extend_from_slice(&f.payload);
}

/// Writes queued frames until the queue closes or the socket fails, coalescing the frames
/// waiting at once into one write (up to about 1 MiB).
async fn write_frames(mut wr: impl AsyncWriteExt + Unpin, mut rx: mpsc::Receiver<Frame>) {
    let mut buf = Vec::new();
    while let Some(f) = rx.recv().await {
        buf.clear();
        encode_frame(&mut buf, &f);
        while buf.len() <= 1 << 20 {
            match rx.try_recv() {
                Ok(f) => encode_frame(&mut buf, &f),
                Err(_) => break,
            }
        }
        // A TLS stream holds what the socket did not take until flushed.
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
}

async fn read_frame(rd: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Option<Frame>> {
    let len = match rd.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if !(17..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("raft frame of {len} bytes"),
        ));
    }
    let kind = rd.read_u8().await?;
    let group = rd.read_u64().await?;
    let id = rd.read_u64().await?;
    // Read as the bytes arrive: a peer claiming a large frame must send it.
    let mut payload = Vec::new();
    (&mut *rd)
        .take((len - 17) as u64)
        .read_to_end(&mut payload)
        .await?;
    if payload.len() != len - 17 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let kind = Kind::from_u8(kind).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("raft frame kind {kind}"))
    })?;
    Ok(Some(Frame {
        kind,
        group,
        id,
        payload,
    }))
}

fn to_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // Encoding our own values into a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

fn from_bytes<T: DeserializeOwned>(b: &[u8]) -> std::io::Result<T> {
    postcard::from_bytes(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// The groups this node serves, by group key, and the nodes it no longer talks to.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    inner: Arc<RwLock<HashMap<u64, GroupRaft>>>,
    retired: Arc<RwLock<std::collections::BTreeSet<NodeId>>>,
    sequencers: Arc<RwLock<HashMap<u64, crate::raft::sequencer::Sequencer>>>,
}

impl Groups {
    /// Refuses connections from `ids` from now on (nodes replaced for good: a retired node
    /// that comes back must not disturb the groups it was removed from).
    pub fn retire(&self, ids: impl IntoIterator<Item = NodeId>) {
        self.retired
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ids);
    }

    /// Whether node `id` is retired.
    pub fn is_retired(&self, id: NodeId) -> bool {
        self.retired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    /// Takes the transaction markers for partition `group` through `seq`.
    pub fn add_sequencer(&self, group: u64, seq: crate::raft::sequencer::Sequencer) {
        self.sequencers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, seq);
    }

    fn sequencer(&self, group: u64) -> Option<crate::raft::sequencer::Sequencer> {
        self.sequencers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }

    /// Serves `group` with `raft`.
    pub fn add(&self, group: u64, raft: GroupRaft) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, raft);
    }
    /// Stops serving `group`.
    pub fn remove(&self, group: u64) -> Option<GroupRaft> {
        self.sequencers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group)
    }
    /// The group's Raft.
    pub fn get(&self, group: u64) -> Option<GroupRaft> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }
}

/// Answers peers' RPCs for this node's groups until the listener fails. Dropping the future
/// (aborting its task) closes every connection it accepted.
pub async fn serve(
    listener: TcpListener,
    cluster: String,
    me: NodeId,
    groups: Groups,
    heard: Heard,
    tls: Option<Arc<RaftTls>>,
) -> std::io::Result<()> {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (sock, peer) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let (cluster, groups, heard, tls) = (cluster.clone(), groups.clone(), heard.clone(), tls.clone());
        conns.spawn(async move {
            let (halves, name): (Halves, Option<String>) = match tls {
                None => {
                    let (r, w) = sock.into_split();
                    ((Box::new(r), Box::new(w)), None)
                }
                Some(tls) => match tokio::time::timeout(HELLO_DEADLINE, tls.acceptor.accept(sock)).await {
                    Ok(Ok(s)) => {
                        let name = s
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(foundation::tls::common_name);
                        // Required client certificates: a handshake without one fails.
                        (halves(s), Some(name.unwrap_or_default()))
                    }
                    Ok(Err(e)) => {
                        warn!(%peer, error = %e, "refused a raft connection: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
            };
            if let Err(e) = serve_conn(halves, name, &cluster, me, groups, heard).await {
                debug!(%peer, error = %e, "raft connection closed");
            }
        });
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
    }
}

async fn serve_conn(
    (mut rd, wr): Halves,
    certificate: Option<String>,
    cluster: &str,
    me: NodeId,
    groups: Groups,
    heard: Heard,
) -> std::io::Result<()> {
    let hello = tokio::time::timeout(HELLO_DEADLINE, read_frame(&mut rd))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no hello in time"))??
        .ok_or(std::io::ErrorKind::UnexpectedEof)?;
    let h: Hello = from_bytes(&hello.payload)?;
    if hello.kind != Kind::Hello || h.cluster != cluster || h.node == me {
        warn!(cluster = %h.cluster, node = h.node, "refused a raft peer (wrong cluster or node id)");
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a peer of this cluster",
        ));
    }
    // Over mutual TLS a node speaks only for the node its certificate names (`node-<id>`).
    if let Some(name) = certificate.filter(|n| *n != format!("node-{}", h.node)) {
        warn!(node = h.node, certificate = %name, "refused a raft peer: its certificate names another node");
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the certificate names another node",
        ));
    }
    if groups.is_retired(h.node) {
        warn!(
            node = h.node,
            "refused a retired node (it was replaced; give its directory up)"
        );
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "this node was replaced and is no longer a member of the cluster",
        ));
    }
    let (tx, rx) = mpsc::channel::<Frame>(QUEUE);
    let writer = tokio::spawn(write_frames(wr, rx));
    let mut requests = tokio::task::JoinSet::new();
    let mut streams = stream::Streams::default();
    let r = async {
        while let Some(f) = read_frame(&mut rd).await? {
            heard.now(h.node);
            // A stream's requests are handed on in the order they arrived, never concurrently.
            if f.kind == Kind::StreamAppend {
                streams.take(&groups, f, &tx);
                continue;
            }
            let (groups, tx) = (groups.clone(), tx.clone());
            while requests.try_join_next().is_some() {}
            requests.spawn(async move {
                let (kind, payload) = match answer(&groups, &f).await {
                    Ok(p) => (Kind::Reply, p),
                    Err(e) => (Kind::Failed, to_bytes(&e)),
                };
                let _ = tx
                    .send(Frame {
                        kind,
                        group: f.group,
                        id: f.id,
                        payload,
                    })
                    .await;
            });
        }
        Ok(())
    }
    .await;
    drop(tx);
    let _ = writer.await;
    r
}

/// Serves one request frame: the encoded response, or why not.
async fn answer(groups: &Groups, f: &Frame) -> Result<Vec<u8>, String> {
    if f.kind == Kind::Ping {
        return Ok(Vec::new());
    }
    if f.kind == Kind::Marker {
        let m: MarkerRpc = from_bytes(&f.payload).map_err(|e| e.to_string())?;
        let seq = groups
            .sequencer(f.group)
            .ok_or_else(|| format!("no partition {:#x} on this node", f.group))?;
        return Ok(to_bytes(&seq.marker(m).await));
    }
    let raft = groups
        .get(f.group)
        .ok_or_else(|| format!("no group {:#x} on this node", f.group))?;
    let e = |e: std::io::Error| e.to_string();
    match f.kind {
        Kind::Append => {
            let rpc: AppendEntriesRequest<TypeConfig> = from_bytes(&f.payload).map_err(e)?;
            raft.append_entries(rpc)
                .await
                .map(|r| to_bytes(&r))
                .map_err(|e| e.to_string())
        }
        Kind::Vote => {
            let rpc: VoteRequest<TypeConfig> = from_bytes(&f.payload).map_err(e)?;
            raft.vote(rpc)
                .await
                .map(|r| to_bytes(&r))
                .map_err(|e| e.to_string())
        }
        Kind::PreVote => {
            let rpc: VoteRequest<TypeConfig> = from_bytes(&f.payload).map_err(e)?;
            raft.pre_vote(rpc)
                .await
                .map(|r| to_bytes(&r))
                .map_err(|e| e.to_string())
        }
        Kind::Snapshot => {
            let w: WireSnapshot = from_bytes(&f.payload).map_err(e)?;
            let snapshot = SnapshotOf::<TypeConfig, PartitionSnapshot> {
                meta: w.meta,
                snapshot: PartitionSnapshot {
                    state: w.state,
                    batches: SnapshotBatches::Carried(w.batches),
                },
            };
            raft.install_full_snapshot(w.vote, snapshot)
                .await
                .map(|r| to_bytes(&r))
                .map_err(|e| e.to_string())
        }
        Kind::TransferLeader => {
            let rpc: TransferLeaderRequest<TypeConfig> = from_bytes(&f.payload).map_err(e)?;
            raft.handle_transfer_leader(rpc)
                .await
                .map(|r| to_bytes(&r))
                .map_err(|e| e.to_string())
        }
        Kind::Propose => {
            let cmd: super::Command = from_bytes(&f.payload).map_err(e)?;
            raft.client_write(cmd)
                .await
                .map(|r| to_bytes(&r.data))
                .map_err(|e| e.to_string())
        }
        Kind::Hello | Kind::Reply | Kind::Failed | Kind::Ping | Kind::StreamAppend | Kind::Marker => {
            Err(format!("unexpected {:?} frame", f.kind))
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>>>;

/// When this node last received a frame from each peer (a request on the peer's connection
/// or a reply on its own): how a follower tells a live leader from one that stopped talking
/// before an election has replaced it.
#[derive(Debug, Clone, Default)]
pub struct Heard(Arc<Mutex<HashMap<NodeId, std::time::Instant>>>);

impl Heard {
    fn now(&self, peer: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, std::time::Instant::now());
    }

    /// Whether a frame from `peer` arrived within `window`.
    pub fn within(&self, peer: NodeId, window: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .is_some_and(|t| t.elapsed() < window)
    }
}

/// The connection to one peer, dialled on first use and again after a loss.
#[derive(Debug)]
struct Peer {
    id: NodeId,
    addr: String,
    /// The live connection's queue, and whether its reader saw it end.
    conn: tokio::sync::Mutex<Option<(mpsc::Sender<Frame>, Arc<std::sync::atomic::AtomicBool>)>>,
    pending: Pending,
}

/// Every connection of this node to its peers.
#[derive(Debug, Clone)]
pub struct Network {
    cluster: String,
    me: NodeId,
    peers: Arc<RwLock<HashMap<NodeId, Arc<Peer>>>>,
    /// How this node reaches a peer, when its configuration says (`--peer ID=HOST:PORT`):
    /// that wins over the address the peer registered, which is what the cluster's
    /// membership carries and may not be routable from here (NAT, proxies).
    routes: Arc<HashMap<NodeId, String>>,
    heard: Heard,
    next_id: Arc<AtomicU64>,
    tls: Option<Arc<RaftTls>>,
}

impl Network {
    /// The network of node `me` in `cluster`.
    pub fn new(cluster: impl Into<String>, me: NodeId) -> Self {
        Self::with_routes(cluster, me, HashMap::new())
    }

    /// Like [`Network::new`], reaching the peers in `routes` at those addresses whatever
    /// address the membership gives for them.
    pub fn with_routes(cluster: impl Into<String>, me: NodeId, routes: HashMap<NodeId, String>) -> Self {
        Network {
            cluster: cluster.into(),
            me,
            peers: Arc::default(),
            routes: Arc::new(routes),
            heard: Heard::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            tls: None,
        }
    }

    /// Every link of this network over mutual TLS.
    pub fn with_tls(mut self, tls: Option<Arc<RaftTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// When each peer was last heard from (shared with [`serve`]).
    pub fn heard(&self) -> Heard {
        self.heard.clone()
    }

    fn peer(&self, id: NodeId, addr: &str) -> Arc<Peer> {
        let addr = self.routes.get(&id).map_or(addr, String::as_str);
        if let Some(p) = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .filter(|p| p.addr == addr)
        {
            return p.clone();
        }
        let p = Arc::new(Peer {
            id,
            addr: addr.to_string(),
            conn: tokio::sync::Mutex::new(None),
            pending: Arc::default(),
        });
        self.peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, p.clone());
        p
    }

    /// Proposes `cmd` to `group` on node `target` (its leader, presumably) and returns what
    /// applying it answered.
    pub async fn propose(
        &self,
        target: NodeId,
        addr: &str,
        group: u64,
        cmd: &super::Command,
        ttl: Duration,
    ) -> Result<super::Response, String> {
        let bytes = self
            .call(target, addr, Kind::Propose, group, to_bytes(cmd), ttl)
            .await
            .map_err(|e| format!("{e:?}"))?;
        from_bytes(&bytes).map_err(|e| e.to_string())
    }

    /// Asks node `target` at `addr` to write a transaction marker to partition `group`
    /// (it must lead it): the code it answers.
    pub async fn marker(
        &self,
        target: NodeId,
        addr: &str,
        group: u64,
        m: &MarkerRpc,
        ttl: Duration,
    ) -> Result<crate::errors::Code, String> {
        let bytes = self
            .call(target, addr, Kind::Marker, group, to_bytes(m), ttl)
            .await
            .map_err(|e| format!("{e:?}"))?;
        from_bytes(&bytes).map_err(|e| e.to_string())
    }

    /// Pings node `target` at `addr` (whatever answers proves it alive: see [`Heard`]).
    pub async fn ping(&self, target: NodeId, addr: &str, ttl: Duration) -> bool {
        self.call(target, addr, Kind::Ping, 0, Vec::new(), ttl)
            .await
            .is_ok()
    }

    /// The factory for one group's clients.
    pub fn factory(&self, group: u64) -> NetFactory {
        NetFactory {
            net: self.clone(),
            group,
        }
    }

    async fn call(
        &self,
        target: NodeId,
        addr: &str,
        kind: Kind,
        group: u64,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Vec<u8>, CallError> {
        match tokio::time::timeout(ttl, async {
            self.send(target, addr, kind, group, payload).await?.reply().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// Sends a request frame and returns what waits for its reply: requests sent one after
    /// another from one task reach the peer in that order (one connection, one writer).
    async fn send(
        &self,
        target: NodeId,
        addr: &str,
        kind: Kind,
        group: u64,
        payload: Vec<u8>,
    ) -> Result<InFlight, CallError> {
        let peer = self.peer(target, addr);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        peer.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        // From here on the entry goes when the reply has come or the wait is given up.
        let flight = InFlight {
            pending: peer.pending.clone(),
            id,
            rx,
        };
        let conn = self.connection(&peer).await?;
        conn.send(Frame {
            kind,
            group,
            id,
            payload,
        })
        .await
        .map_err(|_| CallError::Unreachable("connection closed".into()))?;
        Ok(flight)
    }

    async fn connection(&self, peer: &Arc<Peer>) -> Result<mpsc::Sender<Frame>, CallError> {
        let mut conn = peer.conn.lock().await;
        if let Some((c, _)) = conn
            .as_ref()
            .filter(|(c, dead)| !c.is_closed() && !dead.load(Ordering::SeqCst))
        {
            return Ok(c.clone());
        }
        // A dead connection's queue goes now, which ends its writer.
        *conn = None;
        let sock = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&peer.addr))
            .await
            .map_err(|_| CallError::Unreachable(format!("connecting to {} timed out", peer.addr)))?
            .map_err(|e| CallError::Unreachable(format!("{}: {e}", peer.addr)))?;
        let _ = sock.set_nodelay(true);
        let (mut rd, mut wr): Halves = match &self.tls {
            None => {
                let (r, w) = sock.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(tls) => {
                let host = peer.addr.rsplit_once(':').map_or(peer.addr.as_str(), |(h, _)| h);
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| CallError::Unreachable(format!("{}: {e}", peer.addr)))?;
                let stream = tokio::time::timeout(HELLO_DEADLINE, tls.connector.connect(name, sock))
                    .await
                    .map_err(|_| CallError::Unreachable(format!("TLS with {} timed out", peer.addr)))?
                    .map_err(|e| CallError::Unreachable(format!("TLS with {}: {e}", peer.addr)))?;
                halves(stream)
            }
        };
        let mut hello = Vec::new();
        encode_frame(
            &mut hello,
            &Frame {
                kind: Kind::Hello,
                group: 0,
                id: 0,
                payload: to_bytes(&Hello {
                    cluster: self.cluster.clone(),
                    node: self.me,
                }),
            },
        );
        wr.write_all(&hello)
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        wr.flush()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Frame>(QUEUE);
        tokio::spawn(write_frames(wr, rx));
        let pending = peer.pending.clone();
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let addr = peer.addr.clone();
        let ended = dead.clone();
        let (heard, target) = (self.heard.clone(), peer.id);
        tokio::spawn(async move {
            while let Ok(Some(f)) = read_frame(&mut rd).await {
                heard.now(target);
                let reply = match f.kind {
                    Kind::Reply => Ok(f.payload),
                    Kind::Failed => Err(from_bytes::<String>(&f.payload).unwrap_or_else(|e| e.to_string())),
                    _ => continue,
                };
                let waiter = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&f.id);
                if let Some(w) = waiter {
                    let _ = w.send(reply);
                }
            }
            debug!(%addr, "raft connection to peer lost");
            // Fail everything in flight on this connection; the next call redials.
            ended.store(true, Ordering::SeqCst);
            pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        *conn = Some((tx.clone(), dead));
        info!(peer = %peer.addr, "raft connection up");
        Ok(tx)
    }
}

/// A request sent, its reply awaited; dropping it forgets the request (a late reply is
/// discarded).
struct InFlight {
    pending: Pending,
    id: u64,
    rx: oneshot::Receiver<Result<Vec<u8>, String>>,
}

impl InFlight {
    /// The reply: the payload, the peer's refusal, or the connection's loss.
    async fn reply(mut self) -> Result<Vec<u8>, CallError> {
        match (&mut self.rx).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err(CallError::Remote(e)),
            Err(_) => Err(CallError::Unreachable("connection lost".into())),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

#[derive(Debug)]
enum CallError {
    Unreachable(String),
    Timeout,
    Remote(String),
}

impl CallError {
    fn rpc(self, target: NodeId) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
            CallError::Timeout => RPCError::Timeout(Timeout {
                action: openraft::network::RPCTypes::AppendEntries,
                id: 0,
                target,
                timeout: Duration::ZERO,
            }),
            CallError::Remote(m) => RPCError::Network(NetworkError::new(&std::io::Error::other(m))),
        }
    }
}

/// Makes clients from one group on this node to its peers.
#[derive(Debug, Clone)]
pub struct NetFactory {
    net: Network,
    group: u64,
}

/// A client from one group on this node to one peer.
#[derive(Debug, Clone)]
pub struct NetClient {
    net: Network,
    group: u64,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for NetFactory {
    type Network = NetClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> NetClient {
        NetClient {
            net: self.net.clone(),
            group: self.group,
            target,
            addr: node.raft.clone(),
        }
    }
}

impl NetClient {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: Kind,
        req: &Req,
        o: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let bytes = self
            .net
            .call(
                self.target,
                &self.addr,
                kind,
                self.group,
                to_bytes(req),
                o.hard_ttl(),
            )
            .await
            .map_err(|e| e.rpc(self.target))?;
        from_bytes(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for NetClient {
    type SnapshotData = PartitionSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        o: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Kind::Append, &rpc, &o).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        o: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Kind::Vote, &rpc, &o).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        o: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Kind::PreVote, &rpc, &o).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        self.pipelined(input, option)
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        o: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Kind::TransferLeader, &rpc, &o).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, PartitionSnapshot>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        o: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let batches = snapshot
            .snapshot
            .batches
            .load()
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let w = WireSnapshot {
            vote,
            meta: snapshot.meta,
            state: snapshot.snapshot.state,
            batches,
        };
        self.rpc(Kind::Snapshot, &w, &o).await.map_err(|e| match e {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
        })
    }
}

/// Binds the Raft listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests;
