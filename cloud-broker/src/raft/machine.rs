//! The state machine of every group behind openraft: a partition ([`Partition`]), the
//! metadata ([`Metadata`]) or group offsets ([`GroupOffsets`]), by the group's kind.
//!
//! Applying a partition entry moves the partition's head and producer windows (the batches
//! themselves stay where the log wrote them) and then the readers' high watermark, so readers
//! never see an offset that is not committed. Metadata and offsets changes are published to
//! their observers the same way, after the apply. The applied state is saved after each apply
//! without waiting for a fsync: after a crash openraft re-applies the committed entries after it.

use std::io;
use std::sync::Arc;

use futures::TryStreamExt;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify};

use super::store::{NodeStore, Slot};
use super::{io_err, Command, Response, TypeConfig};
use crate::batch;
use crate::sm::metadata::Metadata;
use crate::sm::offsets::{GroupOffsets, GroupOffsetsV1};
use crate::sm::partition::{Partition, PartitionV1};
use crate::state::PartitionView;
use crate::storage::CommittedOffset;

/// The state of a group, by its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// A partition.
    Partition(Partition),
    /// The metadata.
    Metadata(Metadata),
    /// Group offsets.
    Offsets(GroupOffsets),
}

/// What a group has applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The last applied entry.
    pub last_applied: Option<LogIdOf<TypeConfig>>,
    /// The last membership applied.
    pub membership: StoredMembershipOf<TypeConfig>,
    /// The state.
    pub state: State,
}

impl Applied {
    fn new(state: State) -> Self {
        Applied {
            last_applied: None,
            membership: Default::default(),
            state,
        }
    }

    /// The partition's head, for a partition group.
    fn head(&self) -> crate::storage::PartitionHead {
        match &self.state {
            State::Partition(p) => p.head,
            _ => Default::default(),
        }
    }
}

/// Committed group offsets as the group coordinator reads them.
pub type OffsetsView =
    Arc<std::sync::RwLock<std::collections::BTreeMap<(String, String, u32), CommittedOffset>>>;

/// Who learns what a group applied.
#[derive(Debug, Clone)]
pub enum Observer {
    /// A partition's readers: its high watermark and log start, and a wake-up.
    Partition {
        /// Watermarks.
        view: Arc<PartitionView>,
        /// Notified when the watermark moves.
        appended: Arc<Notify>,
    },
    /// The node, watching the catalog.
    Metadata(tokio::sync::watch::Sender<Arc<Metadata>>),
    /// The group coordinator's view of one offsets log: committed offsets, and those
    /// pending in transactions.
    Offsets(OffsetsView, crate::storage::PendingTable),
}

/// A snapshot as stored: its meta and the state at its last entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMetaOf<TypeConfig>,
    state: Applied,
}

/// [`State`] as layouts 2 and 3 of the store encoded it (a partition without transactions).
#[derive(Debug, Deserialize)]
enum StateV3 {
    Partition(PartitionV1),
    Metadata(Metadata),
    Offsets(GroupOffsetsV1),
}

/// [`Applied`] as layouts 2 and 3 of the store encoded it.
#[derive(Debug, Deserialize)]
struct AppliedV3 {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    state: StateV3,
}

impl From<AppliedV3> for Applied {
    fn from(a: AppliedV3) -> Self {
        Applied {
            last_applied: a.last_applied,
            membership: a.membership,
            state: match a.state {
                StateV3::Partition(p) => State::Partition(p.into()),
                StateV3::Metadata(m) => State::Metadata(m),
                StateV3::Offsets(o) => State::Offsets(o.into()),
            },
        }
    }
}

/// [`Stored`] as layouts 2 and 3 of the store encoded it.
#[derive(Debug, Deserialize)]
struct StoredV3 {
    meta: SnapshotMetaOf<TypeConfig>,
    state: AppliedV3,
}

/// [`State`] as layout 1 of the store encoded it.
#[derive(Debug, Deserialize)]
enum StateV1 {
    Partition(PartitionV1),
    Metadata(crate::sm::metadata::MetadataV1),
    Offsets(GroupOffsetsV1),
}

/// [`Applied`] as layout 1 of the store encoded it.
#[derive(Debug, Deserialize)]
struct AppliedV1 {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    state: StateV1,
}

impl From<AppliedV1> for Applied {
    fn from(a: AppliedV1) -> Self {
        Applied {
            last_applied: a.last_applied,
            membership: a.membership,
            state: match a.state {
                StateV1::Partition(p) => State::Partition(p.into()),
                StateV1::Metadata(m) => State::Metadata(m.into()),
                StateV1::Offsets(o) => State::Offsets(o.into()),
            },
        }
    }
}

/// [`Stored`] as layout 1 of the store encoded it.
#[derive(Debug, Deserialize)]
struct StoredV1 {
    meta: SnapshotMetaOf<TypeConfig>,
    state: AppliedV1,
}

/// Decodes a stored [`Applied`], of this layout or of layout 1 (whose metadata lacked the
/// fields replacements added; the record is written in this layout at the next apply). A
/// record of this layout never decodes as layout 1 the other way round: it is longer, and
/// the store refuses to open for a build that reads only layout 1.
fn decode_applied(b: &[u8]) -> io::Result<Applied> {
    match postcard::from_bytes::<Applied>(b) {
        Ok(a) => Ok(a),
        Err(e) => postcard::from_bytes::<AppliedV3>(b)
            .map(Applied::from)
            .or_else(|_| postcard::from_bytes::<AppliedV1>(b).map(Applied::from))
            .map_err(|_| io_err(e)),
    }
}

/// Decodes a stored snapshot of this layout or of layout 1 (see [`decode_applied`]).
fn decode_stored(b: &[u8]) -> io::Result<Stored> {
    match postcard::from_bytes::<Stored>(b) {
        Ok(s) => Ok(s),
        Err(e) => postcard::from_bytes::<StoredV3>(b)
            .map(|s| Stored {
                meta: s.meta,
                state: s.state.into(),
            })
            .or_else(|_| {
                postcard::from_bytes::<StoredV1>(b).map(|s| Stored {
                    meta: s.meta,
                    state: s.state.into(),
                })
            })
            .map_err(|_| io_err(e)),
    }
}

/// The batches a snapshot carries: the partition's data from its log start to the snapshot.
#[derive(Debug, Clone)]
pub enum SnapshotBatches {
    /// Still in a node's store (read when the snapshot is sent).
    Local {
        /// The store.
        store: NodeStore,
        /// The group.
        group: u64,
        /// First offset.
        from: i64,
        /// End offset (exclusive).
        end: i64,
    },
    /// Carried over the network: `(base offset, batch)`.
    Carried(Vec<(i64, Vec<u8>)>),
}

impl SnapshotBatches {
    /// The batches, in offset order.
    pub fn load(&self) -> io::Result<Vec<(i64, Vec<u8>)>> {
        match self {
            SnapshotBatches::Carried(b) => Ok(b.clone()),
            SnapshotBatches::Local {
                store,
                group,
                from,
                end,
            } => {
                let raw = store.batches(*group, *from, *end, usize::MAX)?;
                Ok(batch::iter(&raw)
                    .filter(|(h, _)| h.base_offset < *end)
                    .map(|(h, b)| (h.base_offset, b.to_vec()))
                    .collect())
            }
        }
    }
}

/// A partition snapshot's data: the state and the batches.
#[derive(Debug, Clone)]
pub struct PartitionSnapshot {
    /// The state at the snapshot's last entry.
    pub state: Applied,
    /// The batches from the log start up to it.
    pub batches: SnapshotBatches,
}

/// The state machine of one group on one node.
#[derive(Debug, Clone)]
pub struct GroupMachine {
    store: NodeStore,
    group: u64,
    state: Arc<Mutex<Applied>>,
    observer: Observer,
}

impl GroupMachine {
    /// The machine of `group`, restored from the store; its kind follows `observer`, who
    /// learns what it applies.
    pub fn open(store: NodeStore, group: u64, observer: Observer) -> io::Result<Self> {
        let state: Applied = match store.get(group, Slot::Machine)? {
            Some(b) => decode_applied(&b)?,
            None => Applied::new(match observer {
                Observer::Partition { .. } => State::Partition(Partition::default()),
                Observer::Metadata(_) => State::Metadata(Metadata::default()),
                Observer::Offsets(..) => State::Offsets(GroupOffsets::default()),
            }),
        };
        let m = GroupMachine {
            store,
            group,
            state: Arc::new(Mutex::new(state.clone())),
            observer,
        };
        m.publish(&state);
        Ok(m)
    }

    /// The applied partition (a copy; empty for a group of another kind).
    pub async fn partition(&self) -> Partition {
        match &self.state.lock().await.state {
            State::Partition(p) => p.clone(),
            _ => Partition::default(),
        }
    }

    /// What `f` makes of the applied offsets log (of a default one for a group of another
    /// kind).
    pub async fn offsets_read<T>(&self, f: impl FnOnce(&GroupOffsets) -> T) -> T {
        match &self.state.lock().await.state {
            State::Offsets(o) => f(o),
            _ => f(&GroupOffsets::default()),
        }
    }

    /// The applied metadata (a copy; empty for a group of another kind).
    pub async fn metadata(&self) -> Metadata {
        match &self.state.lock().await.state {
            State::Metadata(m) => m.clone(),
            _ => Metadata::default(),
        }
    }

    fn publish(&self, s: &Applied) {
        match (&self.observer, &s.state) {
            (Observer::Partition { view, appended }, State::Partition(p)) => {
                let old = view.publish(p);
                if old != p.head.next_offset {
                    appended.notify_waiters();
                }
            }
            (Observer::Metadata(tx), State::Metadata(m)) => {
                tx.send_if_modified(|cur| {
                    let changed = **cur != *m;
                    if changed {
                        *cur = Arc::new(m.clone());
                    }
                    changed
                });
            }
            (Observer::Offsets(view, pending), State::Offsets(o)) => {
                // The views hold every offsets log of the node: touch only this log's groups.
                let log = match super::GroupId::from_key(self.group) {
                    Some(super::GroupId::Offsets(n)) => Some(n),
                    _ => None,
                };
                {
                    let mut p = pending.write().unwrap_or_else(|e| e.into_inner());
                    p.retain(|k| log.is_some_and(|n| crate::sm::offsets::partition_for(&k.0) != n));
                    for ((g, _), offsets) in &o.pending {
                        p.extend(offsets.keys().map(|(t, part)| (g.clone(), t.clone(), *part)));
                    }
                }
                let mut v = view.write().unwrap_or_else(|e| e.into_inner());
                v.retain(|k, _| {
                    log.is_some_and(|n| crate::sm::offsets::partition_for(&k.0) != n)
                        || o.offsets.contains_key(k)
                });
                for (k, c) in &o.offsets {
                    if v.get(k) != Some(c) {
                        v.insert(k.clone(), c.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// Saves `state` as the applied state and as the snapshot `meta` describes: the machine
    /// state first, so that a snapshot is never ahead of what a restart restores.
    async fn save(&self, meta: SnapshotMetaOf<TypeConfig>, state: &Applied) -> io::Result<()> {
        self.store
            .put(self.group, Slot::Machine, Self::encode(state)?)
            .await?;
        let stored = Stored {
            meta,
            state: state.clone(),
        };
        self.store
            .put(
                self.group,
                Slot::Snapshot,
                postcard::to_allocvec(&stored).map_err(io_err)?,
            )
            .await
    }

    /// A snapshot of `state` whose batches are read from this node's store when it is sent.
    fn local_snapshot(
        &self,
        meta: SnapshotMetaOf<TypeConfig>,
        state: Applied,
    ) -> SnapshotOf<TypeConfig, PartitionSnapshot> {
        let head = state.head();
        SnapshotOf::<TypeConfig, PartitionSnapshot> {
            meta,
            snapshot: PartitionSnapshot {
                batches: SnapshotBatches::Local {
                    store: self.store.clone(),
                    group: self.group,
                    from: head.log_start,
                    end: head.next_offset,
                },
                state,
            },
        }
    }

    fn encode(s: &Applied) -> io::Result<Vec<u8>> {
        postcard::to_allocvec(s).map_err(io_err)
    }
}

impl RaftStateMachine<TypeConfig> for GroupMachine {
    type SnapshotData = PartitionSnapshot;
    type SnapshotBuilder = GroupMachine;

    async fn applied_state(
        &mut self,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        let s = self.state.lock().await;
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: futures::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut s = self.state.lock().await;
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = match &entry.payload {
                EntryPayload::Blank => Response::Nothing,
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                    Response::Nothing
                }
                EntryPayload::Normal(cmd) => match (cmd, &mut s.state) {
                    (Command::Partition(cmd), State::Partition(p)) => {
                        p.apply(cmd).map_err(|e| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("group {:#x} entry {}: {e}", self.group, entry.log_id.index),
                            )
                        })?;
                        Response::Partition {
                            next_offset: p.head.next_offset,
                        }
                    }
                    (Command::Meta(cmd), State::Metadata(m)) => Response::Meta(m.apply(cmd)),
                    (Command::Offsets(cmd), State::Offsets(o)) => {
                        o.apply(cmd);
                        Response::Nothing
                    }
                    (cmd, _) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "group {:#x} entry {}: {cmd} does not belong in this group",
                                self.group, entry.log_id.index
                            ),
                        ))
                    }
                },
            };
            s.last_applied = Some(entry.log_id);
            if let Some(r) = responder {
                r.send(response);
            }
        }
        self.store.put_soon(self.group, Slot::Machine, Self::encode(&s)?);
        self.publish(&s);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: PartitionSnapshot,
    ) -> io::Result<()> {
        let batches = snapshot.batches.load()?;
        let state = snapshot.state;
        let upto = meta.last_log_id.map(|l| l.index);
        let mut s = self.state.lock().await;
        self.store.seal(self.group, upto, batches).await?;
        self.save(meta.clone(), &state).await?;
        *s = state;
        self.publish(&s);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, PartitionSnapshot>>> {
        let Some(b) = self.store.get(self.group, Slot::Snapshot)? else {
            return Ok(None);
        };
        let stored = decode_stored(&b)?;
        Ok(Some(self.local_snapshot(stored.meta, stored.state)))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupMachine {
    type SnapshotData = PartitionSnapshot;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, PartitionSnapshot>> {
        let s = self.state.lock().await.clone();
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: s.last_applied,
            last_membership: s.membership.clone(),
        };
        self.save(meta.clone(), &s).await?;
        Ok(self.local_snapshot(meta, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sm::metadata::NodeAddr;

    /// The shapes layout 1 wrote, to write such records here.
    #[derive(Serialize)]
    struct MetadataV1Out {
        topics: std::collections::BTreeMap<String, crate::storage::TopicMeta>,
        next_topic_id: u32,
        next_producer_id: i64,
        nodes: std::collections::BTreeMap<u64, NodeAddr>,
    }
    #[derive(Serialize)]
    struct PartitionV1Out {
        head: crate::storage::PartitionHead,
        producers: std::collections::BTreeMap<i64, crate::storage::ProducerState>,
    }
    #[derive(Serialize)]
    struct GroupOffsetsV1Out {
        offsets: std::collections::BTreeMap<(String, String, u32), CommittedOffset>,
    }
    #[derive(Serialize)]
    enum StateV1Out {
        Partition(PartitionV1Out),
        Metadata(MetadataV1Out),
        Offsets(GroupOffsetsV1Out),
    }
    #[derive(Serialize)]
    struct AppliedV1Out {
        last_applied: Option<LogIdOf<TypeConfig>>,
        membership: StoredMembershipOf<TypeConfig>,
        state: StateV1Out,
    }

    /// Layout 3 (before transactions) had partitions and offsets logs without them; its
    /// records are read, and written back in this layout.
    #[test]
    fn partitions_and_offsets_written_before_transactions_are_read() {
        let head = crate::storage::PartitionHead {
            log_start: 3,
            next_offset: 40,
            bytes: 900,
        };
        let producers = std::collections::BTreeMap::from([(7, crate::storage::ProducerState::default())]);
        let old = AppliedV1Out {
            last_applied: None,
            membership: Default::default(),
            state: StateV1Out::Partition(PartitionV1Out {
                head,
                producers: producers.clone(),
            }),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        assert!(
            postcard::from_bytes::<Applied>(&bytes).is_err(),
            "not this layout"
        );
        let read = decode_applied(&bytes).unwrap();
        let State::Partition(p) = &read.state else {
            panic!("{read:?}")
        };
        assert_eq!(
            (p.head, &p.producers, p.txns.is_empty()),
            (head, &producers, true)
        );
        let again = GroupMachine::encode(&read).unwrap();
        assert_eq!(decode_applied(&again).unwrap(), read);

        let offsets = std::collections::BTreeMap::from([(
            ("g".to_string(), "t".to_string(), 0),
            CommittedOffset {
                offset: 5,
                metadata: String::new(),
            },
        )]);
        let old = AppliedV1Out {
            last_applied: None,
            membership: Default::default(),
            state: StateV1Out::Offsets(GroupOffsetsV1Out {
                offsets: offsets.clone(),
            }),
        };
        let read = decode_applied(&postcard::to_allocvec(&old).unwrap()).unwrap();
        let State::Offsets(o) = &read.state else {
            panic!("{read:?}")
        };
        assert_eq!(
            (&o.offsets, o.txns.is_empty(), o.pending.is_empty()),
            (&offsets, true, true)
        );
    }

    #[test]
    fn metadata_written_by_layout_1_is_read_and_written_back_in_this_layout() {
        let nodes: std::collections::BTreeMap<u64, NodeAddr> = [(
            1,
            NodeAddr {
                raft: "a:1".into(),
                kafka: "a:2".into(),
                listeners: Default::default(),
            },
        )]
        .into();
        let old = AppliedV1Out {
            last_applied: None,
            membership: Default::default(),
            state: StateV1Out::Metadata(MetadataV1Out {
                topics: Default::default(),
                next_topic_id: 7,
                next_producer_id: 5000,
                nodes: nodes.clone(),
            }),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        assert!(
            postcard::from_bytes::<Applied>(&bytes).is_err(),
            "a layout-1 record does not pass for this layout"
        );
        let read = decode_applied(&bytes).unwrap();
        let State::Metadata(m) = &read.state else {
            panic!("{read:?}")
        };
        assert_eq!((m.next_topic_id, m.next_producer_id, &m.nodes), (7, 5000, &nodes));
        assert!(m.replaced.is_empty() && m.offsets_replicas.is_empty());
        let again = GroupMachine::encode(&read).unwrap();
        assert_eq!(decode_applied(&again).unwrap(), read);
        assert!(decode_applied(&[0xff, 0xff]).is_err(), "garbage is an error");
    }
}
