//! Durable Raft log and metadata on sled: [`SledStorage`] implements [`raft::Storage`].
//!
//! This module owns two sled trees of the node's database:
//!
//! * `raft_log`: one record per log entry, key = entry index as a big-endian `u64` (so sled's
//!   key order is log order), value = the protobuf-encoded [`Entry`].
//! * `raft_meta`: `hard_state` ([`HardState`]), `conf_state` (the current [`ConfState`]),
//!   `snapshot_meta` (the [`SnapshotMetadata`] of the latest snapshot, small, read on every
//!   `term` lookup) and `snapshot` (the [`Snapshot`]: its metadata, and as data the small
//!   [`Descriptor`] of the state machine image, written together with `snapshot_meta`).
//! * `raft_snap_images` and `raft_snap_chunks`: snapshot images (format and writers in
//!   [`super::snapshot`]): one [`ImageEntry`] per image (its descriptor, and whether every
//!   chunk is in and verified), and the image's chunks (each at most a few MiB, with its
//!   CRC-32). A state of any size is stored, restored and sent in these bounded pieces.
//!
//! Invariants (checked on [`SledStorage::open`] where cheap, kept by every mutator):
//!
//! * The log keys are contiguous: every index in `[first_index, last_index]` has a record and
//!   each record's `Entry::index` equals its key.
//! * `first_index <= snapshot.index + 1` and `snapshot.index <= last_index`: compaction never
//!   drops an entry a snapshot does not cover, and `term(snapshot.index)` is always answerable
//!   (from the snapshot metadata once the entry itself is compacted away).
//!   With an empty log, `first_index = snapshot.index + 1` and `last_index = snapshot.index`.
//! * Entries at or below the snapshot index are committed and never overwritten: `append`
//!   refuses them.
//! * `hard_state.commit <= last_index`, and a snapshot is only taken at an index `<= commit`.
//! * The stored snapshot names an image that is stored complete (checked on open, and by
//!   `create_snapshot` / `apply_snapshot` before they switch to it; data that is not a
//!   descriptor, from older versions and tests, is taken as is). Images are only deleted
//!   once replaced ([`SledStorage::collect_images`], after the switch): every image but the
//!   named one whose index is not above the stored snapshot's, unless a peer read it within
//!   [`PIN_TTL`] ([`SledStorage::pin_image`]); images above it are being received and belong
//!   to the receiver.
//! * Every public mutator is atomic: single-tree changes go through one `sled::Batch`,
//!   cross-tree changes (`apply_snapshot`) through one sled transaction. Durability comes from
//!   [`SledStorage::flush`], which the driver calls once per `Ready`.
//!
//! Restart semantics: [`raft::Storage::initial_state`] reports the configuration *of the
//! latest snapshot* (the point the state machine restarts from), not the latest applied
//! configuration: raft-rs is then restarted with `applied = snapshot index` and the driver
//! re-applies every committed entry after it, conf changes included, so the configuration
//! evolves exactly as it did the first time (a conf state ahead of the replayed entries can make
//! a replayed conf change fail, e.g. "removed all voters"). `conf_state` is still written on
//! every applied conf change, for diagnostics.
//!
//! Snapshots for peers: [`raft::Storage::snapshot`] serves the stored snapshot only if it is
//! recent enough and its configuration contains the peer (raft-rs refuses to restore a snapshot
//! that does not list the receiver, which is always the case for a peer added after the stored
//! snapshot was taken). Otherwise it records the request
//! ([`SledStorage::take_snapshot_request`]) and answers `SnapshotTemporarilyUnavailable`; the
//! driver then creates a fresh snapshot and raft-rs retries.
//!
//! Simulated power loss ([`WriteJournal`], for tests): dropping a sled handle flushes it, so a
//! test that "crashes" a node by dropping it would only ever see clean shutdowns. A storage
//! opened with [`SledStorage::open_journaled`] also records, for every mutator call since the
//! last [`SledStorage::flush`], the values it overwrote; [`WriteJournal::lose_unflushed`] then
//! puts them back, so what a restart finds is exactly what was flushed (plus, if asked, a
//! prefix of the later writes, as sled's log may persist). A cut can also be armed for the next
//! flush, to lose power in the middle of a `Ready`. Production opens without a journal and pays
//! one `Option` check per write.
//!
//! sled is the only source of truth (nothing is cached), so clones are interchangeable: raft-rs
//! owns one inside the `RawNode` and the driver writes through another. The clones also share
//! one atomic slot for the snapshot request above. Mutations are expected
//! from a single writer (the Raft driver, between `RawNode` calls). No method panics on bad disk
//! data; corruption and sled failures surface as [`StorageError`] (or, through the
//! [`raft::Storage`] trait, as `raft::Error::Store(raft::StorageError::Other(..))`).

use std::cmp;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::snapshot::{Descriptor, ImageEntry};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use sled::transaction::{TransactionError, Transactional};

/// Tree holding the log entries.
pub const LOG_TREE: &str = "raft_log";
/// Tree holding hard state, conf state and the latest snapshot.
pub const META_TREE: &str = "raft_meta";
/// Tree holding the chunks of snapshot images: key = image id (BE u64) + chunk number (BE u32),
/// value = CRC-32 of the chunk (BE u32) + the chunk's bytes.
pub const CHUNK_TREE: &str = "raft_snap_chunks";
/// Tree holding one small record per snapshot image: key = image id (BE u64), value = the
/// codec-encoded [`ImageEntry`].
pub const IMAGE_TREE: &str = "raft_snap_images";
/// How long an image a peer is reading ([`SledStorage::pin_image`]) outlives its replacement.
pub const PIN_TTL: std::time::Duration = std::time::Duration::from_secs(60);

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// No log keys, for [`SledStorage::remember`].
const NO_KEYS: [[u8; 8]; 0] = [];

/// Errors of [`SledStorage`]'s own API. Inside the [`raft::Storage`] trait they are wrapped as
/// `raft::Error::Store(raft::StorageError::Other(..))`.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled failed (I/O, corruption detected by sled, ...).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A protobuf message could not be encoded.
    #[error("encoding {what}: {source}")]
    Encode {
        /// Which record.
        what: &'static str,
        /// The codec error.
        source: protobuf::ProtobufError,
    },
    /// A stored record could not be decoded.
    #[error("decoding {what}: {source}")]
    Decode {
        /// Which record.
        what: &'static str,
        /// The codec error.
        source: protobuf::ProtobufError,
    },
    /// The stored data violates an invariant of this module.
    #[error("corrupt raft storage: {0}")]
    Corrupt(String),
    /// `initialize` was called on a storage that already holds state.
    #[error("raft storage is already initialized")]
    AlreadyInitialized,
    /// `append` was asked to write at or below the compacted / snapshotted prefix.
    #[error(
        "cannot append at index {index}: first index is {first_index}, snapshot index is {snapshot_index}"
    )]
    AppendCompacted {
        /// First index of the entries to append.
        index: u64,
        /// Current first index.
        first_index: u64,
        /// Current snapshot index.
        snapshot_index: u64,
    },
    /// `append` would leave a hole after the last stored entry.
    #[error("cannot append at index {index}: last index is {last_index}")]
    AppendGap {
        /// First index of the entries to append.
        index: u64,
        /// Current last index.
        last_index: u64,
    },
    /// The entries given to `append` do not have consecutive indexes.
    #[error("entries to append are not contiguous: expected index {expected}, got {got}")]
    NotContiguous {
        /// The index the entry should have had.
        expected: u64,
        /// The index it had.
        got: u64,
    },
    /// A snapshot older than what is already stored.
    #[error("snapshot at index {index} is out of date (current snapshot {snapshot_index}, first index {first_index})")]
    SnapshotOutOfDate {
        /// Index of the rejected snapshot.
        index: u64,
        /// Current snapshot index.
        snapshot_index: u64,
        /// Current first index.
        first_index: u64,
    },
    /// `create_snapshot` at an index that is not committed or whose term is unknown.
    #[error("cannot snapshot at index {index}: must be in [1, commit {commit}] and in the log [{first_index}, {last_index}]")]
    SnapshotIndexInvalid {
        /// Requested index.
        index: u64,
        /// Current commit index.
        commit: u64,
        /// Current first index.
        first_index: u64,
        /// Current last index.
        last_index: u64,
    },
    /// `compact` past what the latest snapshot covers.
    #[error("cannot compact to {index}: the latest snapshot only covers up to {snapshot_index}")]
    CompactBeyondSnapshot {
        /// Requested compact index.
        index: u64,
        /// Current snapshot index.
        snapshot_index: u64,
    },
    /// `entries` called with `low > high`.
    #[error("invalid entry range [{low}, {high})")]
    InvalidRange {
        /// Low bound.
        low: u64,
        /// High bound (exclusive).
        high: u64,
    },
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}

fn from_tx(e: TransactionError<Infallible>) -> StorageError {
    match e {
        TransactionError::Storage(e) => StorageError::Sled(e),
        TransactionError::Abort(never) => match never {},
    }
}

fn chunk_key(id: u64, seq: u32) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&id.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_index(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StorageError::Corrupt(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn encode<M: protobuf::Message>(m: &M, what: &'static str) -> Result<Vec<u8>, StorageError> {
    m.write_to_bytes()
        .map_err(|source| StorageError::Encode { what, source })
}

fn decode<M: protobuf::Message>(bytes: &[u8], what: &'static str) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|source| StorageError::Decode { what, source })
}

fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StorageError> {
    let index = decode_index(key)?;
    let entry: Entry = decode(value, "log entry")?;
    if entry.index != index {
        return Err(StorageError::Corrupt(format!(
            "log record at key {index} holds entry {}",
            entry.index
        )));
    }
    Ok(entry)
}

/// Raft log, hard state, conf state and latest snapshot persisted in sled.
///
/// Cheap to clone (sled handles are `Arc`s); all clones see the same data.
#[derive(Clone)]
pub struct SledStorage {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    chunks: sled::Tree,
    images: sled::Tree,
    /// Images peers are reading (image id -> last read), kept past their replacement.
    pins: Arc<Mutex<HashMap<u64, Instant>>>,
    /// Raft id of the last peer a snapshot was asked for and not served (0: none).
    snapshot_request: Arc<AtomicU64>,
    /// Tests only: undo records of the writes since the last flush (simulated power loss).
    journal: Option<Arc<WriteJournal>>,
}

/// Which of the two trees a journalled key lives in.
#[derive(Clone, Copy, Debug)]
enum TreeId {
    Log,
    Meta,
    Chunks,
    Images,
}

/// One key a mutator wrote, and its value before (`None`: absent).
type Undo = (TreeId, Vec<u8>, Option<sled::IVec>);

/// Simulated power loss (tests): undo records for the writes a [`SledStorage`] made since its
/// last successful [`SledStorage::flush`], one group per mutator call, oldest first. Shared
/// by every clone of the storage it was opened with. See the module header.
#[derive(Debug, Default)]
pub struct WriteJournal {
    inner: Mutex<Journal>,
}

#[derive(Debug, Default)]
struct Journal {
    ops: Vec<Vec<Undo>>,
    /// The next flush is where the power goes out.
    armed: bool,
    /// The power went out at a flush: that flush and the later ones do not count.
    cut: bool,
}

impl WriteJournal {
    /// An empty journal, to pass to [`SledStorage::open_journaled`].
    pub fn new() -> Arc<WriteJournal> {
        Arc::new(WriteJournal::default())
    }

    fn lock(&self) -> MutexGuard<'_, Journal> {
        // A panic while holding the lock leaves a consistent journal: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, op: Vec<Undo>) {
        self.lock().ops.push(op);
    }

    fn flushed(&self) {
        let mut j = self.lock();
        if std::mem::take(&mut j.armed) {
            j.cut = true;
        }
        if !j.cut {
            j.ops.clear();
        }
    }

    /// Mutator calls (each one atomic sled write) since the last successful flush.
    pub fn unflushed(&self) -> usize {
        self.lock().ops.len()
    }

    /// Arms (`true`) or disarms a power cut at the next flush: from then on nothing written
    /// becomes durable (see [`WriteJournal::is_cut`]) until [`WriteJournal::lose_unflushed`].
    /// A simulation uses it to crash a node in the middle of handling a `Ready`.
    pub fn cut_at_next_flush(&self, on: bool) {
        self.lock().armed = on;
    }

    /// The armed cut happened: a flush was reached since arming it.
    pub fn is_cut(&self) -> bool {
        self.lock().cut
    }

    /// The power goes out: undoes, newest first, every unflushed mutator call after the first
    /// `keep` of them, writing the old values straight into `db` (the database the storage
    /// was opened on; nothing may write through the storage any more), and flushes, so a
    /// reopened storage finds what was flushed plus those first `keep` calls. Returns how
    /// many calls were undone.
    pub fn lose_unflushed(&self, db: &sled::Db, keep: usize) -> Result<usize, StorageError> {
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let chunks = db.open_tree(CHUNK_TREE)?;
        let images = db.open_tree(IMAGE_TREE)?;
        let mut j = self.lock();
        let keep = keep.min(j.ops.len());
        let lost = j.ops.len() - keep;
        for op in j.ops.drain(keep..).rev() {
            for (tree, key, old) in op.into_iter().rev() {
                let tree = match tree {
                    TreeId::Log => &log,
                    TreeId::Meta => &meta,
                    TreeId::Chunks => &chunks,
                    TreeId::Images => &images,
                };
                match old {
                    Some(v) => tree.insert(key, v)?,
                    None => tree.remove(key)?,
                };
            }
        }
        db.flush()?;
        *j = Journal::default();
        Ok(lost)
    }
}

impl fmt::Debug for SledStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // sled's own Debug dumps whole trees; keep this short.
        f.debug_struct("SledStorage").finish_non_exhaustive()
    }
}

impl SledStorage {
    /// Opens (or creates empty) the Raft trees in `db` and checks the stored state is coherent.
    pub fn open(db: &sled::Db) -> Result<Self, StorageError> {
        Self::open_inner(db, None)
    }

    /// Like [`SledStorage::open`], and records every write in `journal` until it is flushed,
    /// so a test can throw the unflushed ones away ([`WriteJournal::lose_unflushed`]).
    pub fn open_journaled(db: &sled::Db, journal: Arc<WriteJournal>) -> Result<Self, StorageError> {
        Self::open_inner(db, Some(journal))
    }

    fn open_inner(db: &sled::Db, journal: Option<Arc<WriteJournal>>) -> Result<Self, StorageError> {
        let storage = SledStorage {
            db: db.clone(),
            log: db.open_tree(LOG_TREE)?,
            meta: db.open_tree(META_TREE)?,
            chunks: db.open_tree(CHUNK_TREE)?,
            images: db.open_tree(IMAGE_TREE)?,
            pins: Arc::new(Mutex::new(HashMap::new())),
            snapshot_request: Arc::new(AtomicU64::new(0)),
            journal,
        };
        storage.check()?;
        storage.sweep_chunks()?;
        Ok(storage)
    }

    /// Deletes chunks whose image has no record (a transfer cut off between dropping an
    /// image and a late chunk write, or a crash part-way through). One seek per image id,
    /// not one read per chunk.
    fn sweep_chunks(&self) -> Result<(), StorageError> {
        let mut from = [0u8; 8];
        loop {
            let Some((key, _)) = self.chunks.range(from..).next().transpose()? else {
                return Ok(());
            };
            let id = decode_index(key.get(..8).unwrap_or_default())?;
            if self.images.get(id.to_be_bytes())?.is_none() {
                tracing::info!(image = %format_args!("{id:x}"), "dropping chunks of an unrecorded snapshot image");
                self.delete_image(id)?;
            }
            match id.checked_add(1) {
                Some(next) => from = next.to_be_bytes(),
                None => return Ok(()),
            }
        }
    }

    /// With a journal: records the current values of the keys one mutator call is about to
    /// write (`log` keys in the log tree, `meta` keys in the meta tree). A no-op otherwise.
    fn remember<K: AsRef<[u8]>>(
        &self,
        log: impl IntoIterator<Item = K>,
        meta: &[&[u8]],
    ) -> Result<(), StorageError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let mut op = Vec::new();
        for key in log {
            let key = key.as_ref();
            op.push((TreeId::Log, key.to_vec(), self.log.get(key)?));
        }
        for &key in meta {
            op.push((TreeId::Meta, key.to_vec(), self.meta.get(key)?));
        }
        journal.record(op);
        Ok(())
    }

    /// With a journal: records the current values of `keys` in `tree` (one mutator call).
    fn remember_keys(&self, tree: TreeId, keys: &[Vec<u8>]) -> Result<(), StorageError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let t = self.tree(tree);
        let mut op = Vec::with_capacity(keys.len());
        for key in keys {
            op.push((tree, key.clone(), t.get(key)?));
        }
        journal.record(op);
        Ok(())
    }

    fn tree(&self, tree: TreeId) -> &sled::Tree {
        match tree {
            TreeId::Log => &self.log,
            TreeId::Meta => &self.meta,
            TreeId::Chunks => &self.chunks,
            TreeId::Images => &self.images,
        }
    }

    // ---- snapshot images (format: super::snapshot) ----

    /// The record of image `id`, if any.
    pub(crate) fn image_entry(&self, id: u64) -> Result<Option<ImageEntry>, StorageError> {
        match self.images.get(id.to_be_bytes())? {
            Some(v) => Ok(Some(ImageEntry::decode(&v).map_err(StorageError::Corrupt)?)),
            None => Ok(None),
        }
    }

    /// Every image record (a few: the current image, one being received, pinned old ones).
    pub(crate) fn image_entries(&self) -> Result<Vec<ImageEntry>, StorageError> {
        let mut out = Vec::new();
        for item in self.images.iter() {
            let (_, v) = item?;
            out.push(ImageEntry::decode(&v).map_err(StorageError::Corrupt)?);
        }
        Ok(out)
    }

    /// Writes (or overwrites) the record of an image.
    pub(crate) fn put_image_entry(&self, entry: &ImageEntry) -> Result<(), StorageError> {
        let key = entry.desc.id.to_be_bytes();
        self.remember_keys(TreeId::Images, &[key.to_vec()])?;
        self.images.insert(key, entry.encode())?;
        Ok(())
    }

    /// Stores chunk `seq` of image `id`, with its CRC-32.
    pub(crate) fn put_chunk(&self, id: u64, seq: u32, data: &[u8]) -> Result<(), StorageError> {
        let key = chunk_key(id, seq);
        let mut value = Vec::with_capacity(4 + data.len());
        value.extend_from_slice(&crc32fast::hash(data).to_be_bytes());
        value.extend_from_slice(data);
        self.remember_keys(TreeId::Chunks, &[key.to_vec()])?;
        self.chunks.insert(key, value)?;
        Ok(())
    }

    /// Whether chunk `seq` of image `id` is stored.
    pub(crate) fn has_chunk(&self, id: u64, seq: u32) -> Result<bool, StorageError> {
        Ok(self.chunks.contains_key(chunk_key(id, seq))?)
    }

    /// Chunk `seq` of image `id` (checked against its stored CRC-32), `None` if absent.
    pub(crate) fn chunk(&self, id: u64, seq: u32) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(v) = self.chunks.get(chunk_key(id, seq))? else {
            return Ok(None);
        };
        let (crc, data) = v
            .split_first_chunk::<4>()
            .ok_or_else(|| StorageError::Corrupt(format!("image {id:x} chunk {seq}: truncated")))?;
        if crc32fast::hash(data) != u32::from_be_bytes(*crc) {
            return Err(StorageError::Corrupt(format!(
                "image {id:x} chunk {seq}: checksum mismatch"
            )));
        }
        Ok(Some(data.to_vec()))
    }

    /// Deletes image `id` (its chunks and its record) in one transaction.
    pub(crate) fn delete_image(&self, id: u64) -> Result<(), StorageError> {
        let prefix = id.to_be_bytes();
        let keys = self
            .chunks
            .scan_prefix(prefix)
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        if self.journal.is_some() {
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
            self.remember_keys(TreeId::Chunks, &keys)?;
            self.remember_keys(TreeId::Images, &[prefix.to_vec()])?;
        }
        let mut batch = sled::Batch::default();
        for key in &keys {
            batch.remove(key);
        }
        (&self.chunks, &self.images)
            .transaction(|(chunks, images)| {
                chunks.apply_batch(&batch)?;
                images.remove(&prefix[..])?;
                Ok(())
            })
            .map_err(from_tx)
    }

    /// A peer is reading image `id`: keep it for [`PIN_TTL`] after this read even if a newer
    /// snapshot replaces it, so a long transfer is not cut off by the next snapshot.
    pub fn pin_image(&self, id: u64) {
        if let Ok(mut pins) = self.pins.lock() {
            pins.insert(id, Instant::now());
        }
    }

    /// The descriptor of the image the stored snapshot names (`None`: no snapshot, or a
    /// snapshot whose data is not an image, e.g. written by an older version).
    pub(crate) fn current_image(&self) -> Result<Option<Descriptor>, StorageError> {
        let Some(snap) = self.stored_snapshot()? else {
            return Ok(None);
        };
        match Descriptor::decode(snap.get_data()) {
            Some(Ok(d)) => Ok(Some(d)),
            Some(Err(e)) => Err(StorageError::Corrupt(format!("snapshot descriptor: {e}"))),
            None => Ok(None),
        }
    }

    /// Deletes the images nobody needs: every image other than the current one whose index
    /// is not above the current snapshot's, unless pinned. Images above it are being received
    /// (or were, and wait for raft-rs to install them) and are left to their owner.
    pub(crate) fn collect_images(&self) -> Result<(), StorageError> {
        let current = self.current_image()?;
        let snap_index = self.snapshot_metadata()?.index;
        let now = Instant::now();
        let pinned: Vec<u64> = match self.pins.lock() {
            Ok(mut pins) => {
                pins.retain(|_, at| now.duration_since(*at) < PIN_TTL);
                pins.keys().copied().collect()
            }
            Err(_) => Vec::new(),
        };
        for entry in self.image_entries()? {
            let id = entry.desc.id;
            if current.is_some_and(|c| c.id == id)
                || pinned.contains(&id)
                || entry.desc.index > snap_index
            {
                continue;
            }
            self.delete_image(id)?;
        }
        Ok(())
    }

    /// `data` names an image (see [`Descriptor`]): it must be stored, complete and be the
    /// image of snapshot `index`. Other data (tests, older versions) is taken as is.
    fn check_image(&self, data: &[u8], index: u64) -> Result<(), StorageError> {
        let desc = match Descriptor::decode(data) {
            None => return Ok(()),
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(StorageError::Corrupt(format!("snapshot descriptor: {e}"))),
        };
        match self.image_entry(desc.id)? {
            Some(e) if e.complete && e.desc == desc && desc.index == index => Ok(()),
            _ => Err(StorageError::Corrupt(format!(
                "snapshot {index} names image {:x}, which is not stored complete",
                desc.id
            ))),
        }
    }

    /// Validates the invariants that are cheap to check (decodability of the metadata, bounds).
    fn check(&self) -> Result<(), StorageError> {
        let hs = self.hard_state()?;
        let _ = self.conf_state()?;
        let snap = self.snapshot_metadata()?;
        let (first, last) = self.bounds(&snap)?;
        if first > snap.index + 1 || snap.index > last {
            return Err(StorageError::Corrupt(format!(
                "log [{first}, {last}] does not cover snapshot index {}",
                snap.index
            )));
        }
        if last + 1 - first != self.log.len() as u64 {
            return Err(StorageError::Corrupt(format!(
                "log [{first}, {last}] has {} records",
                self.log.len()
            )));
        }
        if hs.commit > last {
            return Err(StorageError::Corrupt(format!(
                "commit {} beyond last index {last}",
                hs.commit
            )));
        }
        if let Some(snap) = self.stored_snapshot()? {
            self.check_image(snap.get_data(), snap.get_metadata().index)?;
        }
        Ok(())
    }

    /// Whether any Raft state (hard state, conf state, snapshot or entries) is stored.
    ///
    /// A sled read error counts as "initialized": the caller then skips `initialize` (which
    /// must never overwrite existing state) and meets the error on its next read.
    pub fn is_initialized(&self) -> bool {
        let has = |key: &[u8]| self.meta.contains_key(key).unwrap_or(true);
        has(KEY_HARD_STATE) || has(KEY_CONF_STATE) || has(KEY_SNAPSHOT_META) || !self.log.is_empty()
    }

    /// Bootstraps a brand-new cluster member with `conf_state` (like
    /// `MemStorage::new_with_conf_state`): snapshot metadata index 0 / term 0 carrying
    /// `conf_state`, empty log, default hard state. Refuses an already initialized storage.
    pub fn initialize(&self, conf_state: ConfState) -> Result<(), StorageError> {
        if self.is_initialized() {
            return Err(StorageError::AlreadyInitialized);
        }
        let mut meta = SnapshotMetadata::default();
        meta.set_conf_state(conf_state.clone());
        let mut batch = sled::Batch::default();
        batch.insert(KEY_CONF_STATE, encode(&conf_state, "conf state")?);
        batch.insert(KEY_SNAPSHOT_META, encode(&meta, "snapshot metadata")?);
        self.remember(NO_KEYS, &[KEY_CONF_STATE, KEY_SNAPSHOT_META])?;
        self.meta.apply_batch(batch)?;
        Ok(())
    }

    /// Appends `entries` (consecutive indexes), replacing any stored entries at or after the
    /// first new index. Refuses entries at or below the snapshot index / before the first index,
    /// and entries that would leave a gap after the last index.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(head) = entries.first() else {
            return Ok(());
        };
        let snap = self.snapshot_metadata()?;
        let (first, last) = self.bounds(&snap)?;
        let start = head.index;
        if start < first || start <= snap.index {
            return Err(StorageError::AppendCompacted {
                index: start,
                first_index: first,
                snapshot_index: snap.index,
            });
        }
        if start > last + 1 {
            return Err(StorageError::AppendGap {
                index: start,
                last_index: last,
            });
        }
        let mut batch = sled::Batch::default();
        let mut next = start;
        for e in entries {
            if e.index != next {
                return Err(StorageError::NotContiguous {
                    expected: next,
                    got: e.index,
                });
            }
            batch.insert(&log_key(e.index), encode(e, "log entry")?);
            next += 1;
        }
        // Drop the conflicting suffix the new entries do not overwrite.
        for index in next..=last {
            batch.remove(&log_key(index));
        }
        self.remember((start..cmp::max(next, last + 1)).map(log_key), &[])?;
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Persists the hard state (term, vote, commit).
    pub fn set_hard_state(&self, hs: &HardState) -> Result<(), StorageError> {
        self.remember(NO_KEYS, &[KEY_HARD_STATE])?;
        self.meta
            .insert(KEY_HARD_STATE, encode(hs, "hard state")?)?;
        Ok(())
    }

    /// Updates only the commit index of the stored hard state (for `LightReady::commit_index`).
    pub fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.hard_state()?;
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Persists the current configuration (after `RawNode::apply_conf_change`).
    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), StorageError> {
        self.remember(NO_KEYS, &[KEY_CONF_STATE])?;
        self.meta
            .insert(KEY_CONF_STATE, encode(cs, "conf state")?)?;
        Ok(())
    }

    /// Installs a snapshot received from the leader (`Ready::snapshot`): stores it (metadata
    /// and data), drops the whole log, sets `commit = index`, `term = max(term, snapshot term)`
    /// and the conf state from the snapshot — all in one transaction. Refuses a snapshot older
    /// than the stored one or than the first index.
    pub fn apply_snapshot(&self, snap: Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        let current = self.snapshot_metadata()?;
        let (first, _) = self.bounds(&current)?;
        if meta.index < first || meta.index < current.index {
            return Err(StorageError::SnapshotOutOfDate {
                index: meta.index,
                snapshot_index: current.index,
                first_index: first,
            });
        }
        self.check_image(snap.get_data(), meta.index)?;
        let mut hs = self.hard_state()?;
        hs.term = cmp::max(hs.term, meta.term);
        hs.commit = meta.index;

        let hs_bytes = encode(&hs, "hard state")?;
        let cs_bytes = encode(meta.get_conf_state(), "conf state")?;
        let meta_bytes = encode(meta, "snapshot metadata")?;
        let snap_bytes = encode(&snap, "snapshot")?;
        let keys = self.log.iter().keys().collect::<Result<Vec<_>, _>>()?;
        let mut clear = sled::Batch::default();
        for key in &keys {
            clear.remove(key);
        }
        self.remember(
            &keys,
            &[
                KEY_HARD_STATE,
                KEY_CONF_STATE,
                KEY_SNAPSHOT_META,
                KEY_SNAPSHOT,
            ],
        )?;

        (&self.log, &self.meta)
            .transaction(|(log, m)| {
                log.apply_batch(&clear)?;
                m.insert(KEY_HARD_STATE, hs_bytes.as_slice())?;
                m.insert(KEY_CONF_STATE, cs_bytes.as_slice())?;
                m.insert(KEY_SNAPSHOT_META, meta_bytes.as_slice())?;
                m.insert(KEY_SNAPSHOT, snap_bytes.as_slice())?;
                Ok(())
            })
            .map_err(from_tx)?;
        // The image replaced, and received ones this snapshot makes obsolete.
        self.collect_images()
    }

    /// Records a snapshot of the state machine taken by the caller at applied index `index`
    /// (`data` is the caller's encoding, `conf_state` the configuration as of `index`). The
    /// term is looked up from the log. `index` must be committed, in the log (or equal to the
    /// current snapshot index) and not older than the current snapshot. Does not compact; call
    /// [`SledStorage::compact`] afterwards.
    pub fn create_snapshot(
        &self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let current = self.snapshot_metadata()?;
        let (first, last) = self.bounds(&current)?;
        if index < current.index {
            return Err(StorageError::SnapshotOutOfDate {
                index,
                snapshot_index: current.index,
                first_index: first,
            });
        }
        let commit = self.hard_state()?.commit;
        let invalid = StorageError::SnapshotIndexInvalid {
            index,
            commit,
            first_index: first,
            last_index: last,
        };
        if index == 0 || index > commit || index > last {
            return Err(invalid);
        }
        let term = if index == current.index {
            current.term
        } else if index < first {
            return Err(invalid);
        } else {
            self.entry_term(index)?
        };

        self.check_image(&data, index)?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);

        let mut batch = sled::Batch::default();
        batch.insert(
            KEY_SNAPSHOT_META,
            encode(snap.get_metadata(), "snapshot metadata")?,
        );
        batch.insert(KEY_SNAPSHOT, encode(&snap, "snapshot")?);
        self.remember(NO_KEYS, &[KEY_SNAPSHOT_META, KEY_SNAPSHOT])?;
        self.meta.apply_batch(batch)?;
        // The image replaced (after the switch: a crash in between keeps both).
        self.collect_images()
    }

    /// Drops the entries before `index`, so `first_index` becomes `index`. A no-op if they are
    /// already gone; refuses to go past `snapshot.index + 1` (entries not covered by a snapshot).
    pub fn compact(&self, index: u64) -> Result<(), StorageError> {
        let snap = self.snapshot_metadata()?;
        let (first, _) = self.bounds(&snap)?;
        if index <= first {
            return Ok(());
        }
        if index > snap.index + 1 {
            return Err(StorageError::CompactBeyondSnapshot {
                index,
                snapshot_index: snap.index,
            });
        }
        let mut batch = sled::Batch::default();
        for i in first..index {
            batch.remove(&log_key(i));
        }
        self.remember((first..index).map(log_key), &[])?;
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// The latest snapshot (created locally or received), to rebuild the state machine on
    /// restart. `None` if none was ever created or received (the `initialize` placeholder at
    /// index 0 carries no data and is not returned).
    pub fn snapshot_data(&self) -> Result<Option<(SnapshotMetadata, Vec<u8>)>, StorageError> {
        let Some(mut snap) = self.stored_snapshot()? else {
            return Ok(None);
        };
        let meta = snap.take_metadata();
        Ok(Some((meta, snap.data.to_vec())))
    }

    /// Stored hard state (default if none).
    pub fn hard_state(&self) -> Result<HardState, StorageError> {
        self.get_meta(KEY_HARD_STATE, "hard state")
    }

    /// Stored conf state (default if none).
    pub fn conf_state(&self) -> Result<ConfState, StorageError> {
        self.get_meta(KEY_CONF_STATE, "conf state")
    }

    /// Metadata of the latest snapshot (index 0 / term 0 if none).
    pub fn snapshot_metadata(&self) -> Result<SnapshotMetadata, StorageError> {
        self.get_meta(KEY_SNAPSHOT_META, "snapshot metadata")
    }

    /// The peer a snapshot was asked for since the last call and could not be served (the
    /// stored one is too old or does not list the peer), clearing the request. The driver then
    /// creates a snapshot at its applied index and raft-rs retries sending it.
    pub fn take_snapshot_request(&self) -> Option<u64> {
        match self.snapshot_request.swap(0, Ordering::Relaxed) {
            0 => None,
            peer => Some(peer),
        }
    }

    /// Records that `peer` needs a snapshot the stored one cannot serve (as
    /// [`raft::Storage::snapshot`] does), for [`SledStorage::take_snapshot_request`].
    pub(crate) fn request_snapshot(&self, peer: u64) {
        self.snapshot_request.store(peer.max(1), Ordering::Relaxed);
    }

    /// Makes every write so far durable. Call once after the writes of one `Ready`.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        if let Some(journal) = &self.journal {
            journal.flushed();
        }
        Ok(())
    }

    fn stored_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        match self.meta.get(KEY_SNAPSHOT)? {
            Some(v) => Ok(Some(decode(&v, "snapshot")?)),
            None => Ok(None),
        }
    }

    fn get_meta<M: protobuf::Message + Default>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<M, StorageError> {
        match self.meta.get(key)? {
            Some(v) => decode(&v, what),
            None => Ok(M::default()),
        }
    }

    /// `(first_index, last_index)` given the current snapshot metadata.
    fn bounds(&self, snap: &SnapshotMetadata) -> Result<(u64, u64), StorageError> {
        let first = match self.log.first()? {
            Some((k, _)) => decode_index(&k)?,
            None => return Ok((snap.index + 1, snap.index)),
        };
        let last = match self.log.last()? {
            Some((k, _)) => decode_index(&k)?,
            None => return Ok((snap.index + 1, snap.index)),
        };
        Ok((first, last))
    }

    fn entry_term(&self, index: u64) -> Result<u64, StorageError> {
        let key = log_key(index);
        match self.log.get(key)? {
            Some(v) => Ok(decode_entry(&key, &v)?.term),
            None => Err(StorageError::Corrupt(format!(
                "log entry {index} missing inside the log range"
            ))),
        }
    }

    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        let mut size: u64 = 0;
        let mut expected = low;
        for item in self.log.range(log_key(low)..log_key(high)) {
            let (k, v) = item?;
            let entry = decode_entry(&k, &v)?;
            if entry.index != expected {
                return Err(StorageError::Corrupt(format!(
                    "log entry {expected} missing (next record is {})",
                    entry.index
                )));
            }
            // Same rule as raft::util::limit_size: the first entry always, then while the
            // running total of encoded sizes stays within max_size.
            size = size.saturating_add(v.len() as u64);
            if !out.is_empty() && max_size.is_some_and(|max| size > max) {
                return Ok(out);
            }
            out.push(entry);
            expected += 1;
        }
        if expected != high {
            return Err(StorageError::Corrupt(format!(
                "log entry {expected} missing (wanted [{low}, {high}))"
            )));
        }
        Ok(out)
    }
}

impl raft::Storage for SledStorage {
    /// Hard state, and the configuration as of the latest snapshot (see the module header: the
    /// driver restarts from that snapshot and re-applies the conf changes after it).
    fn initial_state(&self) -> raft::Result<RaftState> {
        let mut snap = self.snapshot_metadata()?;
        Ok(RaftState::new(self.hard_state()?, snap.take_conf_state()))
    }

    /// Entries in `[low, high)`, at least one if the range is non-empty, then limited to
    /// `max_size` encoded bytes. `Compacted` below the first index; `Unavailable` (instead of
    /// MemStorage's panic) past the last index.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let snap = self.snapshot_metadata()?;
        let (first, last) = self.bounds(&snap)?;
        if low < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if low > high {
            return Err(StorageError::InvalidRange { low, high }.into());
        }
        Ok(self.read_entries(low, high, max_size)?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot_metadata()?;
        if idx == snap.index {
            return Ok(snap.term);
        }
        let (first, last) = self.bounds(&snap)?;
        if idx < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entry_term(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        let snap = self.snapshot_metadata()?;
        Ok(self.bounds(&snap)?.0)
    }

    fn last_index(&self) -> raft::Result<u64> {
        let snap = self.snapshot_metadata()?;
        Ok(self.bounds(&snap)?.1)
    }

    /// The stored snapshot (metadata and data) if it is a real one (index > 0), covers
    /// `request_index` and its configuration lists `to`. Otherwise the request is recorded for
    /// the driver ([`SledStorage::take_snapshot_request`]) and raft-rs is told
    /// `SnapshotTemporarilyUnavailable`, so it retries after the driver made a fresh one.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        if let Some(snap) = self.stored_snapshot()? {
            let meta = snap.get_metadata();
            let cs = meta.get_conf_state();
            let lists_peer = cs
                .voters
                .iter()
                .chain(&cs.learners)
                .chain(&cs.voters_outgoing)
                .chain(&cs.learners_next)
                .any(|&id| id == to);
            if meta.index > 0 && meta.index >= request_index && lists_peer {
                return Ok(snap);
            }
        }
        self.request_snapshot(to);
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use protobuf::Message as _;
    use raft::{Config, RawNode, Storage};

    fn new_entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState {
            voters: ids.to_vec(),
            ..Default::default()
        }
    }

    fn new_snapshot(index: u64, term: u64, ids: &[u64]) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().set_conf_state(voters(ids));
        s
    }

    fn open_temp() -> (tempfile::TempDir, sled::Db, SledStorage) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::tests::reopen(dir.path());
        let storage = SledStorage::open(&db).unwrap();
        (dir, db, storage)
    }

    /// A storage whose log is `[first, last]` with term == index, a snapshot at `snap_index`
    /// (term == index) and commit == last. Built through the public API only.
    fn storage_with(first: u64, last: u64, snap_index: u64) -> (tempfile::TempDir, SledStorage) {
        let (dir, _db, s) = open_temp();
        s.initialize(voters(&[1, 2, 3])).unwrap();
        let ents: Vec<Entry> = (1..=last).map(|i| new_entry(i, i)).collect();
        s.append(&ents).unwrap();
        s.set_commit(last).unwrap();
        s.create_snapshot(snap_index, voters(&[1, 2, 3]), b"sm".to_vec())
            .unwrap();
        s.compact(first).unwrap();
        assert_eq!(s.first_index().unwrap(), first);
        assert_eq!(s.last_index().unwrap(), last);
        (dir, s)
    }

    fn all_entries(s: &SledStorage) -> Vec<Entry> {
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        s.entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
    }

    #[test]
    fn empty_storage_is_like_memstorage() {
        let (_dir, _db, s) = open_temp();
        assert!(!s.is_initialized());
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        assert_eq!(
            s.term(1),
            Err(raft::Error::Store(raft::StorageError::Unavailable))
        );
        assert!(!s.initial_state().unwrap().initialized());

        s.initialize(voters(&[1])).unwrap();
        assert!(s.is_initialized());
        let st = s.initial_state().unwrap();
        assert!(st.initialized());
        assert_eq!(st.conf_state, voters(&[1]));
        assert_eq!(st.hard_state, HardState::default());
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        assert!(s.snapshot_data().unwrap().is_none());
        assert_eq!(
            s.snapshot(0, 2),
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        assert!(matches!(
            s.initialize(voters(&[1])),
            Err(StorageError::AlreadyInitialized)
        ));
    }

    #[test]
    fn term() {
        let compacted = || Err(raft::Error::Store(raft::StorageError::Compacted));
        let unavailable = Err(raft::Error::Store(raft::StorageError::Unavailable));
        // Log [3, 5], snapshot at 3 (like MemStorage's test with entries 3, 4, 5).
        let (_dir, s) = storage_with(3, 5, 3);
        let cases = [
            (2, compacted()),
            (3, Ok(3)),
            (4, Ok(4)),
            (5, Ok(5)),
            (6, unavailable),
        ];
        for (idx, want) in cases {
            assert_eq!(s.term(idx), want, "term({idx})");
        }
        // Snapshot at 2 and log [3, 5]: term(2) comes from the snapshot metadata.
        let (_dir, s) = storage_with(3, 5, 2);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.term(1), compacted());
    }

    #[test]
    fn entries_with_max_size() {
        let (_dir, s) = storage_with(3, 6, 3);
        let ents: Vec<Entry> = (3..=6).map(|i| new_entry(i, i)).collect();
        let size = |e: &Entry| u64::from(e.compute_size());
        let max = u64::MAX;
        let ok = |r: std::ops::Range<usize>| Ok(ents[r].to_vec());
        let cases = [
            (
                2,
                6,
                max,
                Err(raft::Error::Store(raft::StorageError::Compacted)),
            ),
            (3, 4, max, ok(0..1)),
            (4, 5, max, ok(1..2)),
            (4, 6, max, ok(1..3)),
            (4, 7, max, ok(1..4)),
            // even if max_size is zero, the first entry is returned
            (4, 7, 0, ok(1..2)),
            (4, 7, size(&ents[1]) + size(&ents[2]), ok(1..3)),
            (
                4,
                7,
                size(&ents[1]) + size(&ents[2]) + size(&ents[3]) / 2,
                ok(1..3),
            ),
            (
                4,
                7,
                size(&ents[1]) + size(&ents[2]) + size(&ents[3]) - 1,
                ok(1..3),
            ),
            (
                4,
                7,
                size(&ents[1]) + size(&ents[2]) + size(&ents[3]),
                ok(1..4),
            ),
            (4, 4, max, Ok(vec![])),
            (
                4,
                8,
                max,
                Err(raft::Error::Store(raft::StorageError::Unavailable)),
            ),
        ];
        for (i, (lo, hi, max_size, want)) in cases.into_iter().enumerate() {
            let got = s.entries(lo, hi, max_size, GetEntriesContext::empty(false));
            assert_eq!(got, want, "case #{i}: [{lo}, {hi}) max {max_size}");
        }
        // NO_LIMIT via None
        assert_eq!(
            s.entries(3, 7, None, GetEntriesContext::empty(false)),
            Ok(ents.clone())
        );
    }

    #[test]
    fn compact() {
        // (compact index, want first index, want term of first entry, want entry count)
        let cases = [(2, 3, 3, 3), (3, 3, 3, 3), (4, 4, 4, 2), (5, 5, 5, 1)];
        for (idx, wfirst, wterm, wlen) in cases {
            let (_dir, s) = storage_with(3, 5, 3);
            s.create_snapshot(5, voters(&[1, 2, 3]), vec![]).unwrap();
            s.compact(idx).unwrap();
            assert_eq!(s.first_index().unwrap(), wfirst, "compact({idx})");
            let ents = all_entries(&s);
            assert_eq!(ents.len(), wlen, "compact({idx})");
            assert_eq!(ents[0].term, wterm, "compact({idx})");
            assert_eq!(s.last_index().unwrap(), 5);
        }

        // Compacting everything the snapshot covers leaves an empty log after the snapshot.
        let (_dir, s) = storage_with(3, 5, 3);
        s.create_snapshot(5, voters(&[1, 2, 3]), vec![]).unwrap();
        s.compact(6).unwrap();
        assert_eq!(s.first_index().unwrap(), 6);
        assert_eq!(s.last_index().unwrap(), 5);
        assert_eq!(s.term(5), Ok(5));
        assert_eq!(
            s.term(4),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        );

        // Never past what the snapshot covers.
        let (_dir, s) = storage_with(3, 5, 3);
        assert!(matches!(
            s.compact(5),
            Err(StorageError::CompactBeyondSnapshot {
                index: 5,
                snapshot_index: 3
            })
        ));
        assert_eq!(s.first_index().unwrap(), 3);
    }

    #[test]
    fn create_snapshot() {
        let unavailable = Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ));
        let (_dir, s) = storage_with(3, 5, 3);
        // Created at 3 by the helper.
        let mut want = new_snapshot(3, 3, &[1, 2, 3]);
        want.data = b"sm".to_vec().into();
        assert_eq!(s.snapshot(0, 2), Ok(want.clone()));
        assert_eq!(s.snapshot(3, 2), Ok(want));
        assert_eq!(s.snapshot(4, 2), unavailable);
        assert_eq!(s.take_snapshot_request(), Some(2));

        s.create_snapshot(4, voters(&[1, 2]), b"four".to_vec())
            .unwrap();
        let mut want = new_snapshot(4, 4, &[1, 2]);
        want.data = b"four".to_vec().into();
        assert_eq!(s.snapshot(4, 2), Ok(want.clone()));
        assert_eq!(s.take_snapshot_request(), None);
        assert_eq!(s.snapshot(5, 2), unavailable);
        assert_eq!(s.take_snapshot_request(), Some(2));
        assert_eq!(s.take_snapshot_request(), None);
        // A peer the snapshot's configuration does not list could not restore it.
        assert_eq!(s.snapshot(0, 3), unavailable);
        assert_eq!(s.take_snapshot_request(), Some(3));
        let (meta, data) = s.snapshot_data().unwrap().unwrap();
        assert_eq!(&meta, want.get_metadata());
        assert_eq!(data, b"four");
        // The current conf state is not touched by create_snapshot.
        assert_eq!(s.conf_state().unwrap(), voters(&[1, 2, 3]));

        // Out of date, uncommitted, beyond the log, index 0.
        assert!(matches!(
            s.create_snapshot(3, voters(&[1]), vec![]),
            Err(StorageError::SnapshotOutOfDate { .. })
        ));
        s.set_commit(4).unwrap();
        assert!(matches!(
            s.create_snapshot(5, voters(&[1]), vec![]),
            Err(StorageError::SnapshotIndexInvalid { .. })
        ));
        let (_dir, _db, fresh) = open_temp();
        fresh.initialize(voters(&[1])).unwrap();
        assert!(matches!(
            fresh.create_snapshot(0, voters(&[1]), vec![]),
            Err(StorageError::SnapshotIndexInvalid { .. })
        ));
    }

    #[test]
    fn append() {
        let e = new_entry;
        let cases: Vec<(Vec<Entry>, Option<Vec<Entry>>)> = vec![
            (
                vec![e(3, 3), e(4, 4), e(5, 5)],
                Some(vec![e(3, 3), e(4, 4), e(5, 5)]),
            ),
            (
                vec![e(3, 3), e(4, 6), e(5, 6)],
                Some(vec![e(3, 3), e(4, 6), e(5, 6)]),
            ),
            (
                vec![e(3, 3), e(4, 4), e(5, 5), e(6, 5)],
                Some(vec![e(3, 3), e(4, 4), e(5, 5), e(6, 5)]),
            ),
            // overwriting compacted raft logs is not allowed
            (vec![e(2, 3), e(3, 3), e(4, 5)], None),
            // truncate the existing entries and append
            (vec![e(4, 5)], Some(vec![e(3, 3), e(4, 5)])),
            // direct append
            (
                vec![e(6, 6)],
                Some(vec![e(3, 3), e(4, 4), e(5, 5), e(6, 6)]),
            ),
            // gap
            (vec![e(7, 6)], None),
            // not contiguous
            (vec![e(4, 4), e(6, 4)], None),
        ];
        for (i, (ents, want)) in cases.into_iter().enumerate() {
            // Log [3, 5], snapshot at 2.
            let (_dir, s) = storage_with(3, 5, 2);
            let res = s.append(&ents);
            match want {
                Some(want) => {
                    res.unwrap();
                    assert_eq!(all_entries(&s), want, "case #{i}");
                    assert_eq!(s.last_index().unwrap(), want.last().unwrap().index);
                }
                None => {
                    assert!(res.is_err(), "case #{i} should fail");
                    assert_eq!(
                        all_entries(&s),
                        vec![e(3, 3), e(4, 4), e(5, 5)],
                        "case #{i}"
                    );
                }
            }
        }

        // Entries covered by the snapshot are never overwritten, even if still in the log.
        let (_dir, s) = storage_with(3, 5, 3);
        assert!(matches!(
            s.append(&[e(3, 9)]),
            Err(StorageError::AppendCompacted { .. })
        ));
        s.append(&[]).unwrap();
    }

    #[test]
    fn apply_snapshot() {
        let (_dir, _db, s) = open_temp();
        let hs = HardState {
            term: 7,
            vote: 2,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
        s.append(&[new_entry(1, 1), new_entry(2, 1)]).unwrap();

        let mut snap = new_snapshot(4, 4, &[1, 2, 3]);
        snap.data = b"image".to_vec().into();
        s.apply_snapshot(snap.clone()).unwrap();

        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, 4);
        assert_eq!(st.hard_state.term, 7); // max(7, 4)
        assert_eq!(st.hard_state.vote, 2);
        assert_eq!(st.conf_state, voters(&[1, 2, 3]));
        assert_eq!(s.first_index().unwrap(), 5);
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(4), Ok(4));
        assert_eq!(
            s.term(2),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        );
        assert_eq!(s.snapshot(4, 2), Ok(snap.clone()));
        let (meta, data) = s.snapshot_data().unwrap().unwrap();
        assert_eq!(&meta, snap.get_metadata());
        assert_eq!(data, b"image");
        // Log continues after the snapshot.
        s.append(&[new_entry(5, 8)]).unwrap();
        assert_eq!(s.last_index().unwrap(), 5);

        // A newer snapshot with a higher term raises the term and clears the log again.
        s.apply_snapshot(new_snapshot(9, 9, &[1])).unwrap();
        assert_eq!(s.hard_state().unwrap().term, 9);
        assert_eq!(s.first_index().unwrap(), 10);
        assert_eq!(s.last_index().unwrap(), 9);

        // Older snapshot refused.
        assert!(matches!(
            s.apply_snapshot(new_snapshot(3, 3, &[1, 2, 3])),
            Err(StorageError::SnapshotOutOfDate { .. })
        ));
        assert_eq!(s.snapshot_metadata().unwrap().index, 9);
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let hs = HardState {
            term: 3,
            vote: 1,
            commit: 8,
            ..Default::default()
        };
        {
            let db = crate::raft::tests::reopen(dir.path());
            let s = SledStorage::open(&db).unwrap();
            s.initialize(voters(&[1])).unwrap();
            let mut ents: Vec<Entry> = (1..=10).map(|i| new_entry(i, 1 + i / 4)).collect();
            ents[4].data = b"payload".to_vec().into();
            s.append(&ents).unwrap();
            s.set_hard_state(&hs).unwrap();
            s.set_conf_state(&voters(&[1, 2])).unwrap();
            s.create_snapshot(6, voters(&[1]), b"state@6".to_vec())
                .unwrap();
            s.compact(5).unwrap();
            s.flush().unwrap();
        }
        let db = crate::raft::tests::reopen(dir.path());
        let s = SledStorage::open(&db).unwrap();
        assert!(s.is_initialized());
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state, hs);
        // The restart configuration is the snapshot's; the latest applied one is kept apart.
        assert_eq!(st.conf_state, voters(&[1]));
        assert_eq!(s.conf_state().unwrap(), voters(&[1, 2]));
        assert_eq!(s.first_index().unwrap(), 5);
        assert_eq!(s.last_index().unwrap(), 10);
        let ents = all_entries(&s);
        assert_eq!(ents.len(), 6);
        assert_eq!(&ents[0].data[..], b"payload");
        assert_eq!(s.term(6), Ok(2));
        assert_eq!(s.term(10), Ok(3));
        let (meta, data) = s.snapshot_data().unwrap().unwrap();
        assert_eq!((meta.index, meta.term), (6, 2));
        assert_eq!(meta.get_conf_state(), &voters(&[1]));
        assert_eq!(data, b"state@6");
    }

    /// A power loss keeps what was flushed (plus the asked-for prefix of later writes) and
    /// nothing else, whatever the mutators did after the flush.
    #[test]
    fn power_loss_keeps_only_flushed_writes() {
        let dir = tempfile::tempdir().unwrap();
        let hs = |term, commit| HardState {
            term,
            vote: 1,
            commit,
            ..Default::default()
        };
        let state = |s: &SledStorage| {
            let snap = s.snapshot_metadata().unwrap();
            (
                s.hard_state().unwrap(),
                s.conf_state().unwrap(),
                (snap.index, snap.term),
                s.snapshot_data().unwrap().map(|(_, d)| d),
                all_entries(s),
            )
        };
        let durable;
        let after_first;
        {
            let db = crate::raft::tests::reopen(dir.path());
            let journal = WriteJournal::new();
            let s = SledStorage::open_journaled(&db, journal.clone()).unwrap();
            s.initialize(voters(&[1])).unwrap();
            s.append(&(1..=6).map(|i| new_entry(i, 1)).collect::<Vec<_>>())
                .unwrap();
            s.set_hard_state(&hs(1, 4)).unwrap();
            assert_eq!(journal.unflushed(), 3);
            s.flush().unwrap();
            assert_eq!(journal.unflushed(), 0);
            durable = state(&s);
            // Every mutator, after the flush: overwrite a suffix, snapshot, compact, ...
            s.append(&[new_entry(5, 2), new_entry(6, 2), new_entry(7, 2)])
                .unwrap();
            after_first = state(&s);
            s.set_hard_state(&hs(2, 7)).unwrap();
            s.set_conf_state(&voters(&[1, 2])).unwrap();
            s.create_snapshot(6, voters(&[1, 2]), b"sm@6".to_vec())
                .unwrap();
            s.compact(5).unwrap();
            let mut snap = new_snapshot(9, 3, &[1, 2, 3]);
            snap.data = b"sm@9".to_vec().into();
            s.apply_snapshot(snap).unwrap();
            assert_eq!(journal.unflushed(), 6);
            assert_eq!(journal.lose_unflushed(&db, 1).unwrap(), 5);
            assert_eq!(journal.unflushed(), 0);
        }
        {
            let db = crate::raft::tests::reopen(dir.path());
            let journal = WriteJournal::new();
            let s = SledStorage::open_journaled(&db, journal.clone()).unwrap();
            assert_eq!(state(&s), after_first);
            s.set_hard_state(&hs(9, 7)).unwrap();
            s.compact(3).unwrap_err(); // refused before writing: nothing to undo
            assert_eq!(journal.unflushed(), 1);
            // The power goes out at the next flush: it and later ones do not count.
            journal.cut_at_next_flush(true);
            assert!(!journal.is_cut());
            s.set_conf_state(&voters(&[7])).unwrap();
            s.flush().unwrap();
            assert!(journal.is_cut());
            s.set_hard_state(&hs(10, 7)).unwrap();
            s.flush().unwrap();
            assert_eq!(journal.unflushed(), 3);
            // Keeping none: everything written since the reopen goes, cut or not.
            journal.lose_unflushed(&db, 0).unwrap();
        }
        let db = crate::raft::tests::reopen(dir.path());
        let s = SledStorage::open(&db).unwrap();
        assert_eq!(state(&s), after_first);
        assert_ne!(state(&s), durable);
    }

    #[test]
    fn bad_disk_data_is_an_error_not_a_panic() {
        let (_dir, db, s) = open_temp();
        s.initialize(voters(&[1])).unwrap();
        s.append(&[new_entry(1, 1), new_entry(2, 1)]).unwrap();
        let log = db.open_tree(LOG_TREE).unwrap();
        log.insert(log_key(2), &b"\xff\xff\xff"[..]).unwrap();
        assert!(matches!(
            s.term(2),
            Err(raft::Error::Store(raft::StorageError::Other(_)))
        ));
        assert!(s
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .is_err());
        let meta = db.open_tree(META_TREE).unwrap();
        meta.insert(KEY_HARD_STATE, &b"\xff"[..]).unwrap();
        assert!(s.initial_state().is_err());
        assert!(matches!(
            SledStorage::open(&db),
            Err(StorageError::Decode { .. })
        ));
        // A hole in the log is detected on open.
        meta.remove(KEY_HARD_STATE).unwrap();
        log.insert(log_key(4), encode(&new_entry(4, 1), "e").unwrap())
            .unwrap();
        assert!(matches!(
            SledStorage::open(&db),
            Err(StorageError::Corrupt(_))
        ));
    }

    /// Stand-in state machine: applied commands and the applied index, in their own tree of
    /// the same db (as a real state machine would keep them).
    struct TestSm {
        tree: sled::Tree,
        applied: u64,
        commands: Vec<Vec<u8>>,
    }

    impl TestSm {
        fn open(db: &sled::Db) -> Self {
            let tree = db.open_tree("test_sm").unwrap();
            let applied = tree
                .get("applied")
                .unwrap()
                .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap()));
            let commands = tree
                .scan_prefix("cmd/")
                .values()
                .map(|v| v.unwrap().to_vec())
                .collect();
            TestSm {
                tree,
                applied,
                commands,
            }
        }

        fn apply(&mut self, entries: Vec<Entry>) {
            for e in entries {
                assert_eq!(e.index, self.applied + 1, "applied out of order / twice");
                if !e.data.is_empty() {
                    let key = [&b"cmd/"[..], &e.index.to_be_bytes()].concat();
                    self.tree.insert(key, &e.data[..]).unwrap();
                    self.commands.push(e.data.to_vec());
                }
                self.applied = e.index;
                self.tree
                    .insert("applied", &self.applied.to_be_bytes())
                    .unwrap();
            }
        }
    }

    fn config(applied: u64) -> Config {
        Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 3,
            pre_vote: true,
            check_quorum: true,
            applied,
            ..Default::default()
        }
    }

    /// Handles every pending Ready in the documented order.
    fn drain_ready(node: &mut RawNode<SledStorage>, store: &SledStorage, sm: &mut TestSm) {
        while node.has_ready() {
            let mut rd = node.ready();
            // Single voter: nobody to send to.
            assert!(rd.take_messages().is_empty());
            if !rd.snapshot().is_empty() {
                store.apply_snapshot(rd.snapshot().clone()).unwrap();
            }
            // Persist the commit index before applying (a restart with Config.applied > stored
            // commit makes raft-rs panic).
            if let Some(hs) = rd.hs() {
                store.set_hard_state(hs).unwrap();
            }
            sm.apply(rd.take_committed_entries());
            store.append(rd.entries()).unwrap();
            store.flush().unwrap();
            assert!(rd.take_persisted_messages().is_empty());
            let mut light = node.advance(rd);
            if let Some(commit) = light.commit_index() {
                store.set_commit(commit).unwrap();
            }
            assert!(light.take_messages().is_empty());
            sm.apply(light.take_committed_entries());
            store.flush().unwrap();
            node.advance_apply();
        }
    }

    #[test]
    fn drives_a_single_voter_raw_node_and_restarts() {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let dir = tempfile::tempdir().unwrap();
        let (term, commit);
        {
            let db = crate::raft::tests::reopen(dir.path());
            let store = SledStorage::open(&db).unwrap();
            store.initialize(voters(&[1])).unwrap();
            let mut sm = TestSm::open(&db);
            let mut node = RawNode::new(&config(0), store.clone(), &logger).unwrap();
            node.campaign().unwrap();
            drain_ready(&mut node, &store, &mut sm);
            assert_eq!(node.raft.state, raft::StateRole::Leader);
            for i in 0..50 {
                node.propose(vec![], format!("cmd-{i}").into_bytes())
                    .unwrap();
            }
            drain_ready(&mut node, &store, &mut sm);

            let want: Vec<Vec<u8>> = (0..50).map(|i| format!("cmd-{i}").into_bytes()).collect();
            assert_eq!(sm.commands, want);
            // Index 1 is the empty entry of the new leader.
            assert_eq!(sm.applied, 51);
            assert_eq!(store.last_index().unwrap(), 51);
            let hs = store.hard_state().unwrap();
            assert_eq!(hs.commit, 51);
            assert_eq!(hs.vote, 1);
            assert_eq!(node.raft.raft_log.applied, 51);
            term = hs.term;
            commit = hs.commit;

            // Snapshot + compact behind the state machine; the restart must cope with it.
            store
                .create_snapshot(40, store.conf_state().unwrap(), b"sm@40".to_vec())
                .unwrap();
            store.compact(40).unwrap();
            store.flush().unwrap();
        }

        let db = crate::raft::tests::reopen(dir.path());
        let store = SledStorage::open(&db).unwrap();
        let mut sm = TestSm::open(&db);
        assert_eq!(sm.applied, 51);
        assert_eq!(sm.commands.len(), 50);
        let mut node = RawNode::new(&config(sm.applied), store.clone(), &logger).unwrap();
        assert_eq!(node.raft.term, term);
        assert_eq!(node.raft.raft_log.committed, commit);
        assert_eq!(node.raft.raft_log.applied, 51);
        // Nothing already applied comes back (TestSm::apply asserts consecutive indexes).
        drain_ready(&mut node, &store, &mut sm);
        assert_eq!(sm.applied, 51);
        node.campaign().unwrap();
        drain_ready(&mut node, &store, &mut sm);
        assert_eq!(node.raft.state, raft::StateRole::Leader);
        assert!(node.raft.term > term);
        node.propose(vec![], b"after-restart".to_vec()).unwrap();
        drain_ready(&mut node, &store, &mut sm);
        // 52 = new leader's empty entry, 53 = the proposal; nothing re-applied (TestSm::apply
        // asserts strictly consecutive indexes).
        assert_eq!(sm.applied, 53);
        assert_eq!(sm.commands.len(), 51);
        assert_eq!(sm.commands.last().unwrap(), b"after-restart");
        assert_eq!(store.hard_state().unwrap().commit, 53);
        assert_eq!(store.first_index().unwrap(), 40);
    }

    #[test]
    fn restart_with_lower_applied_redelivers_the_rest_once() {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::raft::tests::reopen(dir.path());
            let store = SledStorage::open(&db).unwrap();
            store.initialize(voters(&[1])).unwrap();
            let mut sm = TestSm::open(&db);
            let mut node = RawNode::new(&config(0), store.clone(), &logger).unwrap();
            node.campaign().unwrap();
            drain_ready(&mut node, &store, &mut sm);
            for i in 0..10 {
                node.propose(vec![], vec![i]).unwrap();
            }
            drain_ready(&mut node, &store, &mut sm);
            assert_eq!(sm.applied, 11);
            store.flush().unwrap();
        }
        let db = crate::raft::tests::reopen(dir.path());
        let store = SledStorage::open(&db).unwrap();
        // Pretend the state machine only made it to 6 before the crash.
        let mut sm = TestSm {
            tree: db.open_tree("test_sm_b").unwrap(),
            applied: 6,
            commands: vec![],
        };
        let mut node = RawNode::new(&config(6), store.clone(), &logger).unwrap();
        drain_ready(&mut node, &store, &mut sm);
        assert_eq!(sm.applied, 11);
        assert_eq!(sm.commands, (5..10).map(|i| vec![i]).collect::<Vec<_>>());
    }
}
