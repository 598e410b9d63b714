//! The state machine of a partition group: [`Partition`] behind openraft.
//!
//! Applying an entry moves the partition's head and producer windows (the batches themselves
//! stay where the log wrote them) and then the readers' high watermark, so readers never see an
//! offset that is not committed. The applied state is saved after each apply without waiting
//! for a fsync: after a crash openraft re-applies the committed entries after it.

use std::io;
use std::sync::atomic::Ordering;
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
use crate::sm::partition::Partition;
use crate::state::PartitionView;

/// What a partition group has applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The last applied entry.
    pub last_applied: Option<LogIdOf<TypeConfig>>,
    /// The last membership applied.
    pub membership: StoredMembershipOf<TypeConfig>,
    /// The partition.
    pub partition: Partition,
}

/// A snapshot as stored: its meta and the state at its last entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMetaOf<TypeConfig>,
    state: Applied,
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

/// The state machine of one partition group on one node.
#[derive(Debug, Clone)]
pub struct PartitionMachine {
    store: NodeStore,
    group: u64,
    state: Arc<Mutex<Applied>>,
    view: Arc<PartitionView>,
    appended: Arc<Notify>,
}

impl PartitionMachine {
    /// The machine of `group`, restored from the store. `view` gets the high watermark and log
    /// start; `appended` is notified when the watermark moves.
    pub fn open(
        store: NodeStore,
        group: u64,
        view: Arc<PartitionView>,
        appended: Arc<Notify>,
    ) -> io::Result<Self> {
        let state: Applied = match store.get(group, Slot::Machine)? {
            Some(b) => postcard::from_bytes(&b).map_err(io_err)?,
            None => Applied::default(),
        };
        let m = PartitionMachine {
            store,
            group,
            state: Arc::new(Mutex::new(Applied::default())),
            view,
            appended,
        };
        m.publish(&state);
        *m.state.try_lock().map_err(io_err)? = state;
        Ok(m)
    }

    /// The applied partition (a copy).
    pub async fn partition(&self) -> Partition {
        self.state.lock().await.partition.clone()
    }

    fn publish(&self, s: &Applied) {
        let old = self.view.hw.swap(s.partition.head.next_offset, Ordering::SeqCst);
        self.view
            .log_start
            .store(s.partition.head.log_start, Ordering::SeqCst);
        if old != s.partition.head.next_offset {
            self.appended.notify_waiters();
        }
    }

    fn encode(s: &Applied) -> io::Result<Vec<u8>> {
        postcard::to_allocvec(s).map_err(io_err)
    }
}

impl RaftStateMachine<TypeConfig> for PartitionMachine {
    type SnapshotData = PartitionSnapshot;
    type SnapshotBuilder = PartitionMachine;

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
                EntryPayload::Normal(Command::Partition(cmd)) => {
                    s.partition.apply(cmd).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("group {:#x} entry {}: {e}", self.group, entry.log_id.index),
                        )
                    })?;
                    Response::Partition {
                        next_offset: s.partition.head.next_offset,
                    }
                }
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
        let stored = Stored {
            meta: meta.clone(),
            state: state.clone(),
        };
        self.store
            .put(
                self.group,
                Slot::Snapshot,
                postcard::to_allocvec(&stored).map_err(io_err)?,
            )
            .await?;
        self.store
            .put(self.group, Slot::Machine, Self::encode(&state)?)
            .await?;
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
        let stored: Stored = postcard::from_bytes(&b).map_err(io_err)?;
        let head = stored.state.partition.head;
        Ok(Some(SnapshotOf::<TypeConfig, PartitionSnapshot> {
            meta: stored.meta,
            snapshot: PartitionSnapshot {
                batches: SnapshotBatches::Local {
                    store: self.store.clone(),
                    group: self.group,
                    from: head.log_start,
                    end: head.next_offset,
                },
                state: stored.state,
            },
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for PartitionMachine {
    type SnapshotData = PartitionSnapshot;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, PartitionSnapshot>> {
        let s = self.state.lock().await.clone();
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: s.last_applied,
            last_membership: s.membership.clone(),
        };
        let stored = Stored {
            meta: meta.clone(),
            state: s.clone(),
        };
        // The machine state first: a snapshot must never be ahead of what a restart restores.
        self.store
            .put(self.group, Slot::Machine, Self::encode(&s)?)
            .await?;
        self.store
            .put(
                self.group,
                Slot::Snapshot,
                postcard::to_allocvec(&stored).map_err(io_err)?,
            )
            .await?;
        let head = s.partition.head;
        Ok(SnapshotOf::<TypeConfig, PartitionSnapshot> {
            meta,
            snapshot: PartitionSnapshot {
                batches: SnapshotBatches::Local {
                    store: self.store.clone(),
                    group: self.group,
                    from: head.log_start,
                    end: head.next_offset,
                },
                state: s,
            },
        })
    }
}
