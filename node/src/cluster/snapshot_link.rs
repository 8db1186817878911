//! Snapshot images over the network, out of band from Raft (TiKV's way): raft-rs's
//! `MsgSnapshot` carries only a [`Descriptor`]; the receiver pulls the image's chunks from the
//! leader that sent it, stores them, verifies the whole, and only then steps the message
//! into Raft.
//!
//! Receiver ([`Fetcher`]): one transfer at a time (a snapshot from another leader replaces
//! the one in progress; the same or an older one from the same leader is ignored while it
//! runs). Chunks are asked for with [`WireMessage::SnapshotChunk`], at most [`WINDOW`] in
//! flight (flow control: nothing is pushed, the receiver asks for the next chunk only once
//! one is stored). A failed request
//! (connection dropped, timeout) is retried with a backoff, for as long as some chunk arrived
//! within [`STALL`]; chunks already stored are never asked again, also when the leader sends
//! the same snapshot again after the transfer was given up or the node restarted (staged
//! chunks live in sled). A leader answering [`WireReply::SnapshotGone`] ends the transfer.
//! Once every chunk is in and the image's CRC matches, the `MsgSnapshot` is stepped and the
//! leader is told ([`WireMessage::SnapshotStatus`]): delivered, or failed so it sends again.
//!
//! Sender ([`serve_chunk`]): answers a chunk of a complete image from sled (a chunk is at
//! most [`snapshot::MAX_CHUNK_SIZE`], far below the RPC frame limit), pins the image so a
//! newer snapshot does not delete it mid-transfer, and tells Raft the peer is still
//! receiving, so the leader's snapshot wait does not time out on a large image.
//!
//! Authority: chunk requests and status reports are Raft traffic: taken only from the peer
//! bound to the raft id they name (checked by [`super::inbound`]).

use super::raft_link::{peer_of, PeerBook};
use crate::net::NetHandle;
use crate::raft::snapshot::{self, Descriptor, ImageError, SnapshotStore};
use crate::raft::RaftHandle;
use raft::eraftpb::Message;
use skein_protocol::wire::{
    SnapshotChunk, SnapshotChunkRequest, SnapshotStatus, WireMessage, WireReply,
};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Chunk requests in flight per transfer.
pub const WINDOW: usize = 4;
/// A transfer with no chunk stored for this long is given up (the leader sends again, and the
/// next attempt resumes from the chunks already stored).
pub const STALL: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Largest chunk this process served (tests check it stays far below the frame limit).
static LARGEST_CHUNK_SERVED: AtomicUsize = AtomicUsize::new(0);

/// The largest chunk any node in this process served, in bytes.
pub fn largest_chunk_served() -> usize {
    LARGEST_CHUNK_SERVED.load(Ordering::Relaxed)
}

/// Why one chunk could not be had.
#[derive(Debug)]
pub enum FetchError {
    /// The sender no longer has the image: give up.
    Gone,
    /// Worth asking again (connection, timeout, a corrupt chunk).
    Retry(String),
}

/// Where chunks come from (the network, or a test's fake).
pub trait ChunkSource: Clone + Send + Sync + 'static {
    fn fetch(&self, seq: u32) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the sender no longer has the snapshot image")]
    Gone,
    #[error("no chunk arrived for {0:?} (last error: {1})")]
    Stalled(Duration, String),
    #[error("{0}")]
    Image(#[from] ImageError),
    #[error("{0}")]
    Internal(String),
}

/// What one transfer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Chunks already stored when it started (a resumed transfer).
    pub resumed: u32,
    pub fetched: u32,
    pub retries: u32,
    pub largest_chunk: usize,
}

/// Receives image `desc` from `source` into `sink`, resuming what is stored, with at most
/// [`WINDOW`] requests in flight; verifies it and marks it complete.
pub async fn transfer<S: ChunkSource>(
    source: S,
    sink: &SnapshotStore,
    desc: &Descriptor,
    stall: Duration,
) -> Result<TransferStats, TransferError> {
    let mut missing: VecDeque<u32> = sink.begin(desc)?.into();
    let mut stats = TransferStats {
        resumed: desc.chunks - missing.len() as u32,
        ..Default::default()
    };
    let mut inflight = JoinSet::new();
    let mut last_progress = Instant::now();
    let mut backoff = BACKOFF_MIN;
    loop {
        while inflight.len() < WINDOW {
            let Some(seq) = missing.pop_front() else {
                break;
            };
            let s = source.clone();
            inflight.spawn(async move { (seq, s.fetch(seq).await) });
        }
        let Some(done) = inflight.join_next().await else {
            break;
        };
        let (seq, result) = done.map_err(|e| TransferError::Internal(e.to_string()))?;
        let why = match result {
            Ok(bytes) => match sink.put(desc, seq, &bytes) {
                Ok(()) => {
                    stats.fetched += 1;
                    stats.largest_chunk = stats.largest_chunk.max(bytes.len());
                    last_progress = Instant::now();
                    backoff = BACKOFF_MIN;
                    continue;
                }
                // A chunk of the wrong length: ask again.
                Err(e @ ImageError::Bad { .. }) => e.to_string(),
                Err(e) => return Err(e.into()),
            },
            Err(FetchError::Gone) => {
                inflight.abort_all();
                sink.discard(desc.id)?;
                return Err(TransferError::Gone);
            }
            Err(FetchError::Retry(why)) => why,
        };
        stats.retries += 1;
        missing.push_back(seq);
        if last_progress.elapsed() > stall {
            inflight.abort_all();
            return Err(TransferError::Stalled(stall, why));
        }
        tracing::debug!(snapshot = %format_args!("{:x}", desc.id), seq, error = %why, "snapshot chunk: retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    let sink2 = sink.clone();
    let d = *desc;
    tokio::task::spawn_blocking(move || sink2.finish(&d))
        .await
        .map_err(|e| TransferError::Internal(e.to_string()))??;
    Ok(stats)
}

/// Chunks of one image from the leader's node, over the network.
#[derive(Clone)]
pub struct NetSource {
    pub net: NetHandle,
    /// The leader's peer id.
    pub peer: String,
    /// This node's raft id.
    pub from: u64,
    pub snapshot: u64,
}

impl ChunkSource for NetSource {
    async fn fetch(&self, seq: u32) -> Result<Vec<u8>, FetchError> {
        let req = WireMessage::SnapshotChunk(SnapshotChunkRequest {
            from: self.from,
            snapshot: self.snapshot,
            seq,
        });
        match self.net.request(&self.peer, req).await {
            Ok(WireReply::SnapshotChunk(c)) if c.snapshot == self.snapshot && c.seq == seq => {
                if crc32fast::hash(&c.bytes) == c.crc {
                    Ok(c.bytes)
                } else {
                    Err(FetchError::Retry(format!("chunk {seq}: checksum mismatch")))
                }
            }
            Ok(WireReply::SnapshotGone { .. }) => Err(FetchError::Gone),
            Ok(WireReply::Error(e)) => Err(FetchError::Retry(e)),
            Ok(other) => Err(FetchError::Retry(format!("unexpected answer {other:?}"))),
            Err(e) => Err(FetchError::Retry(e.to_string())),
        }
    }
}

/// Sender side: chunk `req.seq` of image `req.snapshot`, for the raft node `req.from` (whose
/// authority the caller checked).
pub async fn serve_chunk(raft: &RaftHandle, req: SnapshotChunkRequest) -> WireReply {
    let images = raft.images().clone();
    let (id, seq) = (req.snapshot, req.seq);
    let read = tokio::task::spawn_blocking(move || images.serve(id, seq)).await;
    match read {
        Ok(Ok(Some(bytes))) => {
            raft.snapshot_progress(req.from).await;
            LARGEST_CHUNK_SERVED.fetch_max(bytes.len(), Ordering::Relaxed);
            WireReply::SnapshotChunk(SnapshotChunk {
                snapshot: id,
                seq,
                crc: crc32fast::hash(&bytes),
                bytes,
            })
        }
        Ok(Ok(None)) => WireReply::SnapshotGone { snapshot: id },
        Ok(Err(e)) => {
            tracing::error!(snapshot = %format_args!("{id:x}"), seq, error = %e, "cannot read a snapshot chunk");
            WireReply::Error(format!("cannot read snapshot chunk {seq}: {e}"))
        }
        Err(e) => WireReply::Error(format!("cannot read snapshot chunk {seq}: {e}")),
    }
}

/// The receiving side: takes `MsgSnapshot`s (already authorised), fetches their images and
/// steps them once stored. Cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    tx: mpsc::Sender<Message>,
}

impl Fetcher {
    /// Starts the fetcher task; it stops on shutdown.
    pub fn start(
        raft: RaftHandle,
        net: NetHandle,
        book: PeerBook,
        shutdown: watch::Receiver<bool>,
    ) -> Fetcher {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run(rx, raft, net, book, shutdown));
        Fetcher { tx }
    }

    /// A `MsgSnapshot` from the leader. Dropped when the fetcher is busy with many (the
    /// leader sends it again).
    pub fn offer(&self, msg: Message) {
        if self.tx.try_send(msg).is_err() {
            tracing::debug!("snapshot fetcher busy: MsgSnapshot dropped");
        }
    }
}

struct Active {
    /// The leader that sent it.
    from: u64,
    desc: Descriptor,
    task: JoinHandle<()>,
}

async fn run(
    mut rx: mpsc::Receiver<Message>,
    raft: RaftHandle,
    net: NetHandle,
    book: PeerBook,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut active: Option<Active> = None;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = shutdown.changed() => break,
        };
        let desc = match Descriptor::decode(msg.get_snapshot().get_data()) {
            // Written by an older version: the data is the whole state.
            None => {
                raft.step(msg).await;
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(from = msg.from, error = %e, "snapshot with a bad descriptor dropped");
                continue;
            }
            Some(Ok(d)) => d,
        };
        if let Some(a) = &active {
            if !a.task.is_finished() && a.from == msg.from && a.desc.index >= desc.index {
                // The same (or a newer) snapshot is already coming from that leader. One
                // from another leader replaces it (the old one may be gone).
                continue;
            }
        }
        if let Some(a) = active.take() {
            a.task.abort();
        }
        let from = msg.from;
        let (raft, net, book) = (raft.clone(), net.clone(), book.clone());
        let task = tokio::spawn(async move { receive(raft, net, book, msg, desc).await });
        active = Some(Active { from, desc, task });
    }
    if let Some(a) = active {
        a.task.abort();
    }
}

/// One transfer: fetch, verify, step, report.
async fn receive(raft: RaftHandle, net: NetHandle, book: PeerBook, msg: Message, desc: Descriptor) {
    let leader = msg.from;
    let me = raft.current().raft_id;
    let Some(peer) = peer_of(&raft, &book, leader) else {
        tracing::warn!(
            leader,
            "snapshot from a raft node with no known address: dropped"
        );
        return;
    };
    let started = std::time::Instant::now();
    tracing::info!(
        leader,
        index = desc.index,
        bytes = desc.size,
        chunks = desc.chunks,
        "receiving a snapshot image"
    );
    let source = NetSource {
        net: net.clone(),
        peer: peer.clone(),
        from: me,
        snapshot: desc.id,
    };
    let result = transfer(source, raft.images(), &desc, STALL).await;
    let delivered = match &result {
        Ok(stats) => {
            tracing::info!(
                leader,
                index = desc.index,
                bytes = desc.size,
                resumed = stats.resumed,
                fetched = stats.fetched,
                retries = stats.retries,
                took = ?started.elapsed(),
                "snapshot image received and verified"
            );
            raft.step(msg).await;
            true
        }
        Err(e) => {
            tracing::warn!(leader, index = desc.index, error = %e, "snapshot transfer failed");
            false
        }
    };
    let status = WireMessage::SnapshotStatus(SnapshotStatus {
        from: me,
        snapshot: desc.id,
        delivered,
    });
    if let Err(e) = net.request(&peer, status).await {
        tracing::debug!(leader, error = %e, "cannot report the snapshot's fate");
    }
}

/// The chunk size bound the wire relies on.
const _: () = assert!(snapshot::MAX_CHUNK_SIZE as usize * 2 < crate::net::MAX_RPC_FRAME);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::raft::snapshot::write_image;
    use crate::raft::storage::SledStorage;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    /// Serves from a store; fails every request once `fail_after` chunks were served, until
    /// `heal` is called; counts what it served.
    #[derive(Clone)]
    struct Flaky {
        store: SnapshotStore,
        id: u64,
        served: Arc<AtomicU32>,
        fail_after: Arc<AtomicU32>,
        in_flight: Arc<AtomicU32>,
        max_in_flight: Arc<AtomicU32>,
    }

    impl ChunkSource for Flaky {
        async fn fetch(&self, seq: u32) -> Result<Vec<u8>, FetchError> {
            let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(n, Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.served.load(Ordering::SeqCst) >= self.fail_after.load(Ordering::SeqCst) {
                return Err(FetchError::Retry("connection closed".into()));
            }
            match self.store.serve(self.id, seq).unwrap() {
                Some(b) => {
                    self.served.fetch_add(1, Ordering::SeqCst);
                    Ok(b)
                }
                None => Err(FetchError::Gone),
            }
        }
    }

    fn open() -> (tempfile::TempDir, SledStorage) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::tests::reopen(dir.path());
        (dir, SledStorage::open(&db).unwrap())
    }

    #[tokio::test]
    async fn a_cut_transfer_resumes_where_it_stopped() {
        let (_d1, from) = open();
        let (_d2, to) = open();
        let st = crate::raft::snapshot::tests::state(6000, 1000);
        let desc = write_image(&from, 1, 9, 2, &st).unwrap();
        assert!(desc.chunks >= 6, "{desc:?}");
        let source = Flaky {
            store: SnapshotStore::new(from.clone()),
            id: desc.id,
            served: Arc::new(AtomicU32::new(0)),
            fail_after: Arc::new(AtomicU32::new(3)),
            in_flight: Arc::new(AtomicU32::new(0)),
            max_in_flight: Arc::new(AtomicU32::new(0)),
        };
        let sink = SnapshotStore::new(to.clone());
        // The connection drops after 3 chunks and stays down: the transfer gives up.
        let err = transfer(source.clone(), &sink, &desc, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::Stalled(..)), "{err}");
        assert!(!sink.is_complete(&desc).unwrap());
        // The link heals; the leader sends the same snapshot again: only the rest moves.
        source.fail_after.store(u32::MAX, Ordering::SeqCst);
        let stats = transfer(source.clone(), &sink, &desc, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(stats.resumed, 3);
        assert_eq!(stats.fetched, desc.chunks - 3);
        assert_eq!(source.served.load(Ordering::SeqCst), desc.chunks);
        assert!(stats.largest_chunk <= snapshot::CHUNK_SIZE as usize);
        // Flow control: never more than the window in flight.
        let max = source.max_in_flight.load(Ordering::SeqCst) as usize;
        assert!((1..=WINDOW).contains(&max), "{max} in flight");
        assert!(sink.is_complete(&desc).unwrap());
        assert_eq!(snapshot::restore(&to, &desc).unwrap(), st);
        // Complete already: nothing to fetch.
        let again = transfer(source.clone(), &sink, &desc, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((again.resumed, again.fetched), (desc.chunks, 0));
    }

    #[tokio::test]
    async fn a_vanished_image_ends_the_transfer() {
        let (_d1, from) = open();
        let (_d2, to) = open();
        let desc =
            write_image(&from, 1, 9, 2, &crate::raft::snapshot::tests::state(10, 10)).unwrap();
        let mut gone = desc;
        gone.id = 77;
        let source = Flaky {
            store: SnapshotStore::new(from.clone()),
            id: 77,
            served: Arc::new(AtomicU32::new(0)),
            fail_after: Arc::new(AtomicU32::new(u32::MAX)),
            in_flight: Arc::new(AtomicU32::new(0)),
            max_in_flight: Arc::new(AtomicU32::new(0)),
        };
        let sink = SnapshotStore::new(to.clone());
        let err = transfer(source, &sink, &gone, STALL).await.unwrap_err();
        assert!(matches!(err, TransferError::Gone));
        assert!(!sink.is_complete(&gone).unwrap());
    }
}
