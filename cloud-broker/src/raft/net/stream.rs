//! Pipelined replication: openraft's `stream_append` over the shared connection.
//!
//! openraft replicates to each follower through a stream of AppendEntries requests. Answered
//! one by one (its default), a leader sends the next batch of entries only after the follower
//! has written and fsync'd the previous one, so a partition's throughput is one round per
//! round trip plus a fsync. Here the sending half keeps up to [`WINDOW`] requests in flight on
//! the connection and yields their answers in order; the receiving half hands the requests of
//! one stream to openraft's own pipelined [`openraft::Raft::stream_append`] in the order they
//! arrived (one connection, one reader), which answers each once its entries are on disk, so
//! the follower's store writes many rounds in one fsync.
//!
//! A stream is named by an id its sender draws; its frames carry `(stream id, request, last)`,
//! `last` set on the request the stream ends with when the sender knows it then (else a frame
//! without a request ends it), so the receiver's worker for the stream ends with it. openraft
//! sends each heartbeat as a stream of one request: such a stream is answered like a unary
//! append, without a worker. A
//! group has several streams to a follower at once (openraft sends heartbeats on a stream of
//! their own), each kept in order. A stream ends at its first error (a conflict, a newer vote,
//! a lost connection, a timeout): the receiver refuses the rest of its frames, and the leader
//! starts a new stream from where the follower stands, as openraft does after any failed
//! append. Requests of different streams may overtake each other, as on any network: Raft's
//! checks (the leader's vote, the entry before the new ones) keep the log right.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use openraft::error::RPCError;
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult};
use tokio::sync::mpsc;

use super::{from_bytes, to_bytes, CallError, Frame, Groups, InFlight, Kind, NetClient};
use crate::raft::{GroupRaft, TypeConfig};

/// Requests of one stream in flight at once (sent, not yet answered).
pub(super) const WINDOW: usize = 32;

/// What the receiver queues for one stream before refusing: a peer keeping to [`WINDOW`]
/// never reaches it.
const RECEIVER_QUEUE: usize = 4 * WINDOW;

/// Most streams open on one connection (two per group per direction is the norm).
const MAX_STREAMS: usize = 1 << 16;

type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// A request of a stream as the receiver queues it: the frame id to answer, and the request.
type Queued = (u64, AppendEntriesRequest<TypeConfig>);

/// A `StreamAppend` frame's payload: the stream, the request (none: the stream ends), and
/// whether it is the stream's last.
type Message = (u64, Option<AppendEntriesRequest<TypeConfig>>, bool);

impl NetClient {
    /// The sending half (see the module docs).
    pub(super) fn pipelined<'s, S>(
        &'s mut self,
        mut input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Answer>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let net = self.net.clone();
        let (target, addr, group) = (self.target, self.addr.clone(), self.group);
        let stream = net.next_id.fetch_add(1, Ordering::Relaxed);
        // As long as a unary append may take: a reply queued behind the window's others is
        // not a lost one.
        let ttl = option.hard_ttl();
        Box::pin(async move {
            // The queue of requests sent, in order; its bound is the window.
            let (sent_tx, sent_rx) = mpsc::channel::<Result<InFlight, CallError>>(WINDOW);
            tokio::spawn(async move {
                let mut held = None;
                loop {
                    let req = match held.take() {
                        Some(r) => r,
                        None => match input.next().await {
                            Some(r) => r,
                            None => {
                                // Ended after a request that was not known to be the last.
                                let end: Message = (stream, None, true);
                                let _ = net
                                    .send(target, &addr, Kind::StreamAppend, group, to_bytes(&end))
                                    .await;
                                return;
                            }
                        },
                    };
                    // Whether another request is there already, or the input has ended.
                    let last = match input.next().now_or_never() {
                        Some(Some(next)) => {
                            held = Some(next);
                            false
                        }
                        Some(None) => true,
                        None => false,
                    };
                    let msg = to_bytes(&(stream, Some(&req), last));
                    let r = net.send(target, &addr, Kind::StreamAppend, group, msg).await;
                    let failed = r.is_err();
                    // The output side gone (openraft dropped the stream): stop sending.
                    if sent_tx.send(r).await.is_err() || failed || last {
                        return;
                    }
                }
            });
            let answers = futures::stream::unfold(Some(sent_rx), move |state| async move {
                let mut sent = state?;
                let flight = sent.recv().await?;
                let reply = match flight {
                    Ok(f) => tokio::time::timeout(ttl, f.reply())
                        .await
                        .unwrap_or(Err(CallError::Timeout)),
                    Err(e) => Err(e),
                };
                let answer = reply.and_then(|b| {
                    from_bytes::<StreamAppendResult<TypeConfig>>(&b)
                        .map_err(|e| CallError::Remote(e.to_string()))
                });
                match answer {
                    // The stream goes on only past a full success.
                    Ok(r) => {
                        let go_on = r.is_ok();
                        Some((Ok(r), go_on.then_some(sent)))
                    }
                    Err(e) => Some((Err(e.rpc(target)), None)),
                }
            });
            Ok(Box::pin(answers) as BoxStream<'s, Answer>)
        })
    }
}

/// The receiving half on one connection: the open streams by `(group, stream id)`, each with
/// the queue feeding it.
#[derive(Default)]
pub(super) struct Streams {
    open: HashMap<(u64, u64), mpsc::Sender<Queued>>,
}

impl Streams {
    /// Takes one `StreamAppend` frame: queues it on its stream (started on its first frame),
    /// or answers it with a refusal at once.
    pub(super) fn take(&mut self, groups: &Groups, f: Frame, replies: &mpsc::Sender<Frame>) {
        let refuse = |why: &str| {
            let _ = replies.try_send(Frame {
                kind: Kind::Failed,
                group: f.group,
                id: f.id,
                payload: to_bytes(&why.to_string()),
            });
        };
        let Ok((stream, req, last)) = from_bytes::<Message>(&f.payload) else {
            return refuse("undecodable stream append");
        };
        let key = (f.group, stream);
        let Some(req) = req else {
            // The stream's end: its worker answers what it holds and stops.
            self.open.remove(&key);
            return;
        };
        let Some(raft) = groups.get(f.group) else {
            return refuse("no such group on this node");
        };
        if last && !self.open.contains_key(&key) {
            tokio::spawn(answer_one(raft, f.group, f.id, req, replies.clone()));
            return;
        }
        if !self.open.contains_key(&key) {
            // Forget the streams that ended before taking a new one.
            self.open.retain(|_, q| !q.is_closed());
            if self.open.len() >= MAX_STREAMS {
                return refuse("too many streams on this connection");
            }
            let (tx, rx) = mpsc::channel(RECEIVER_QUEUE);
            tokio::spawn(serve_stream(raft, f.group, rx, replies.clone()));
            self.open.insert(key, tx);
        }
        let Some(queue) = self.open.get(&key) else {
            return;
        };
        if queue.try_send((f.id, req)).is_err() {
            refuse("stream ended or over its window");
        }
        if last {
            // Its worker ends once it has answered what it holds.
            self.open.remove(&key);
        }
    }
}

/// Answers a stream of one request (a heartbeat) as a unary append.
async fn answer_one(
    raft: GroupRaft,
    group: u64,
    id: u64,
    req: AppendEntriesRequest<TypeConfig>,
    replies: mpsc::Sender<Frame>,
) {
    let prev = req.prev_log_id;
    let last = req.entries.last().map(|e| e.log_id).or(prev);
    let answer: Result<StreamAppendResult<TypeConfig>, String> = match raft.append_entries(req).await {
        Ok(AppendEntriesResponse::Success) => Ok(Ok(last)),
        Ok(AppendEntriesResponse::PartialSuccess(upto)) => Ok(Ok(upto)),
        Ok(AppendEntriesResponse::HigherVote(v)) => Ok(Err(StreamAppendError::HigherVote(v))),
        Ok(AppendEntriesResponse::Conflict) => match prev {
            Some(p) => Ok(Err(StreamAppendError::Conflict(p))),
            None => Err("a conflict without a previous entry".into()),
        },
        Err(e) => Err(e.to_string()),
    };
    let (kind, payload) = match answer {
        Ok(r) => (Kind::Reply, to_bytes(&r)),
        Err(e) => (Kind::Failed, to_bytes(&e)),
    };
    let _ = replies
        .send(Frame {
            kind,
            group,
            id,
            payload,
        })
        .await;
}

/// Feeds one stream's requests to openraft in order and answers each, in order, once openraft
/// has (its entries flushed, or the error that ends the stream).
async fn serve_stream(
    raft: GroupRaft,
    group: u64,
    mut queue: mpsc::Receiver<Queued>,
    replies: mpsc::Sender<Frame>,
) {
    // Never blocks: at most RECEIVER_QUEUE requests are taken before their answers.
    let (input, input_rx) = mpsc::channel(RECEIVER_QUEUE + 1);
    let requests =
        futures::stream::unfold(input_rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut answers = Box::pin(raft.stream_append(requests));
    let mut waiting: VecDeque<u64> = VecDeque::new();
    let reply = |id: u64, kind: Kind, payload: Vec<u8>| Frame {
        kind,
        group,
        id,
        payload,
    };
    let mut open = true;
    loop {
        tokio::select! {
            next = queue.recv(), if open && waiting.len() < RECEIVER_QUEUE => match next {
                Some((id, req)) => {
                    waiting.push_back(id);
                    if input.try_send(req).is_err() {
                        break;
                    }
                }
                None => open = false,
            },
            answer = answers.next(), if !waiting.is_empty() => {
                let Some(id) = waiting.pop_front() else { break };
                let (frame, ends) = match answer {
                    Some(Ok(r)) => {
                        let ends = r.is_err();
                        (reply(id, Kind::Reply, to_bytes(&r)), ends)
                    }
                    Some(Err(fatal)) => (reply(id, Kind::Failed, to_bytes(&fatal.to_string())), true),
                    None => (reply(id, Kind::Failed, to_bytes(&"the stream ended".to_string())), true),
                };
                if replies.send(frame).await.is_err() || ends {
                    break;
                }
            }
            else => break,
        }
    }
    // What is left of an ended stream is refused; the queue closes, and later frames of the
    // stream are refused by the reader.
    queue.close();
    let ended = || to_bytes(&"the stream ended".to_string());
    for id in waiting {
        let _ = replies.send(reply(id, Kind::Failed, ended())).await;
    }
    while let Ok((id, _)) = queue.try_recv() {
        let _ = replies.send(reply(id, Kind::Failed, ended())).await;
    }
}
