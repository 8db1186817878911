//! Snapshot images: the replicated [`ClusterState`] written and read in bounded pieces, so a
//! state of any size can be snapshotted, restored and sent (TiKV's way: raft-rs's
//! `MsgSnapshot` carries only a small [`Descriptor`]; the image moves out of band).
//!
//! Format. An image is a byte stream of records, each `[len: u32 BE][codec frame]` of a
//! [`Record`]: first the small rest of the state (`Rest`: the state with its big collections
//! emptied), then one record per node, service, task, stack, removed node and removed peer
//! (each as its map key and value), then `End` with the record count. No record is the whole
//! state: each is bounded by one object (far below [`codec::MAX_FRAME`]). The stream is cut
//! into chunks of [`CHUNK_SIZE`] bytes (the last one shorter), stored in sled by
//! [`SledStorage`] (tree [`super::storage::CHUNK_TREE`], each chunk with its own CRC-32) and
//! described by a [`Descriptor`] (id, snapshot index and term, size, chunk count, CRC-32 of the
//! whole stream) recorded in an [`ImageEntry`] (tree [`super::storage::IMAGE_TREE`]) that says
//! whether every chunk is in.
//!
//! Invariants:
//! - writing ([`write_image`]) streams from the in-memory state: one chunk buffer (plus one
//!   record) in memory, never a copy of the whole state or of the whole image;
//! - reading ([`restore`]) checks every chunk's CRC, every record's length before allocating
//!   it, the whole stream's CRC, size and record count, and that nothing follows `End`;
//! - an image is only named by a stored snapshot, served to peers or handed to raft-rs once
//!   its entry is `complete`: written by this node, or received and verified
//!   ([`SnapshotStore::finish`]);
//! - image ids are a function of (creating raft id, index, term): the same snapshot resent
//!   by the same leader has the same id, so a receiver resumes it instead of starting over.
//!
//! Who calls it: the Raft core writes images when it snapshots and restores from them on
//! start and on install; the transport (`cluster::snapshot_link`, the simulation, in-memory
//! tests) moves them through a [`SnapshotStore`] or [`copy_image`].

use super::storage::{SledStorage, StorageError};
use super::SplitMix64;
use crate::store::ClusterState;
use serde::{Deserialize, Serialize};
use skein_protocol::codec::{self, CodecError};
use skein_protocol::{Node, NodeId, Service, ServiceId, Task, TaskId};

/// Size of every chunk but an image's last.
pub const CHUNK_SIZE: u32 = 1024 * 1024;
/// Largest chunk size accepted from a peer's descriptor.
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Largest image accepted from a peer's descriptor (64 GiB).
pub const MAX_IMAGE_SIZE: u64 = 64 << 30;
/// Marks snapshot data that is a [`Descriptor`] (older versions stored the encoded state,
/// which starts with the codec's version byte).
const MAGIC: &[u8; 8] = b"skein-i1";

/// What raft-rs's `Snapshot.data` holds: the name and shape of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// See [`image_id`].
    pub id: u64,
    /// The snapshot's index and term.
    pub index: u64,
    pub term: u64,
    /// Bytes in the stream.
    pub size: u64,
    pub chunks: u32,
    pub chunk_size: u32,
    /// CRC-32 of the whole stream.
    pub crc: u32,
    /// Records, `End` included.
    pub records: u64,
}

impl Descriptor {
    /// The bytes raft-rs carries.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        // A few integers: encoding cannot fail.
        out.extend(codec::encode(self).unwrap_or_default());
        out
    }

    /// `None`: not a descriptor (legacy snapshot data); else the decoded, checked descriptor.
    pub fn decode(data: &[u8]) -> Option<Result<Descriptor, String>> {
        let body = data.strip_prefix(MAGIC)?;
        Some(
            codec::decode::<Descriptor>(body)
                .map_err(|e| e.to_string())
                .and_then(|d| d.check().map(|()| d)),
        )
    }

    /// The shape is coherent and within bounds (checked before anything is allocated or
    /// stored for it).
    pub fn check(&self) -> Result<(), String> {
        if self.id == 0 || self.index == 0 {
            return Err("image id and index must not be 0".into());
        }
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return Err(format!("chunk size {} out of range", self.chunk_size));
        }
        if self.size == 0 || self.size > MAX_IMAGE_SIZE {
            return Err(format!("image size {} out of range", self.size));
        }
        if u64::from(self.chunks) != self.size.div_ceil(u64::from(self.chunk_size)) {
            return Err(format!(
                "{} chunks of {} bytes cannot hold {} bytes",
                self.chunks, self.chunk_size, self.size
            ));
        }
        Ok(())
    }

    /// The length chunk `seq` must have.
    pub fn chunk_len(&self, seq: u32) -> usize {
        if seq + 1 < self.chunks {
            self.chunk_size as usize
        } else {
            (self.size - u64::from(self.chunks - 1) * u64::from(self.chunk_size)) as usize
        }
    }
}

/// The stored record of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    pub desc: Descriptor,
    /// Every chunk is stored and the whole image verified.
    pub complete: bool,
    /// Received from a peer ([`SnapshotStore::begin`]), not written by this node: only such
    /// unfinished images are dropped when another transfer starts (never an image a
    /// background snapshot is still writing).
    pub received: bool,
}

impl ImageEntry {
    pub(crate) fn encode(&self) -> Vec<u8> {
        codec::encode(self).unwrap_or_default()
    }
    pub(crate) fn decode(bytes: &[u8]) -> Result<ImageEntry, String> {
        codec::decode(bytes).map_err(|e| format!("image record: {e}"))
    }
}

/// The id of the image raft node `raft_id` makes of its snapshot at (`index`, `term`).
pub fn image_id(raft_id: u64, index: u64, term: u64) -> u64 {
    let mut rng = SplitMix64::new(raft_id.rotate_left(48) ^ index ^ term.rotate_left(24));
    rng.next_u64() | 1
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("snapshot record: {0}")]
    Codec(#[from] CodecError),
    #[error("snapshot image {id:x}: {why}")]
    Bad { id: u64, why: String },
}

fn bad(id: u64, why: impl Into<String>) -> ImageError {
    ImageError::Bad {
        id,
        why: why.into(),
    }
}

/// One record, borrowed from the state (writing).
#[derive(Serialize)]
enum RecordRef<'a> {
    Rest(&'a ClusterState),
    Node(&'a NodeId, &'a Node),
    Service(&'a ServiceId, &'a Service),
    Task(&'a TaskId, &'a Task),
    Stack(&'a String, &'a Vec<skein_protocol::service::StackVersion>),
    Removed(&'a NodeId),
    RemovedPeer(&'a String),
    End { records: u64 },
}

/// One record, owned (reading). Same variants, same order as [`RecordRef`].
// One lives at a time, moved straight into the state: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
enum Record {
    Rest(Box<ClusterState>),
    Node(NodeId, Node),
    Service(ServiceId, Service),
    Task(TaskId, Task),
    Stack(String, Vec<skein_protocol::service::StackVersion>),
    Removed(NodeId),
    RemovedPeer(String),
    End { records: u64 },
}

/// Streams records into chunks of one image.
struct Writer<'a> {
    store: &'a SledStorage,
    id: u64,
    buf: Vec<u8>,
    seq: u32,
    size: u64,
    crc: crc32fast::Hasher,
    records: u64,
}

impl Writer<'_> {
    fn record(&mut self, r: &RecordRef<'_>) -> Result<(), ImageError> {
        let frame = codec::encode(r)?;
        let len = u32::try_from(frame.len()).map_err(|_| bad(self.id, "record too large"))?;
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(&frame);
        self.records += 1;
        while self.buf.len() >= CHUNK_SIZE as usize {
            let rest = self.buf.split_off(CHUNK_SIZE as usize);
            let chunk = std::mem::replace(&mut self.buf, rest);
            self.put(&chunk)?;
        }
        Ok(())
    }

    fn put(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.crc.update(chunk);
        self.store.put_chunk(self.id, self.seq, chunk)?;
        self.seq += 1;
        self.size += chunk.len() as u64;
        Ok(())
    }

    fn finish(mut self, index: u64, term: u64) -> Result<Descriptor, ImageError> {
        let records = self.records + 1;
        self.record(&RecordRef::End { records })?;
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.put(&last)?;
        }
        let desc = Descriptor {
            id: self.id,
            index,
            term,
            size: self.size,
            chunks: self.seq,
            chunk_size: CHUNK_SIZE,
            crc: self.crc.finalize(),
            records,
        };
        desc.check().map_err(|e| bad(self.id, e))?;
        Ok(desc)
    }
}

/// Writes the image of `state` (applied up to `index`, of term `term`) made by `raft_id`, and
/// records it complete. An image with the same id already complete is reused.
pub fn write_image(
    store: &SledStorage,
    raft_id: u64,
    index: u64,
    term: u64,
    state: &ClusterState,
) -> Result<Descriptor, ImageError> {
    let id = image_id(raft_id, index, term);
    if let Some(e) = store.image_entry(id)? {
        if e.complete && e.desc.index == index && e.desc.term == term {
            return Ok(e.desc);
        }
        store.delete_image(id)?;
    }
    // Recorded first (incomplete), so a crash part-way leaves chunks the collector finds.
    let placeholder = Descriptor {
        id,
        index,
        term,
        size: 0,
        chunks: 0,
        chunk_size: CHUNK_SIZE,
        crc: 0,
        records: 0,
    };
    store.put_image_entry(&ImageEntry {
        desc: placeholder,
        complete: false,
        received: false,
    })?;
    let mut w = Writer {
        store,
        id,
        buf: Vec::with_capacity(2 * CHUNK_SIZE as usize),
        seq: 0,
        size: 0,
        crc: crc32fast::Hasher::new(),
        records: 0,
    };
    // Exhaustive: a new field of the state must be placed in a record.
    let ClusterState {
        cluster_id,
        secrets,
        removed,
        nodes,
        services,
        tasks,
        stacks,
        recent_requests,
        removed_peers,
        // Local stamps, not part of the state's value.
        roster: _,
        sessions: _,
    } = state;
    let rest = ClusterState {
        cluster_id: cluster_id.clone(),
        secrets: secrets.clone(),
        recent_requests: recent_requests.clone(),
        ..Default::default()
    };
    w.record(&RecordRef::Rest(&rest))?;
    for (k, v) in nodes {
        w.record(&RecordRef::Node(k, v))?;
    }
    for (k, v) in services {
        w.record(&RecordRef::Service(k, v))?;
    }
    for (k, v) in tasks {
        w.record(&RecordRef::Task(k, v))?;
    }
    for (k, v) in stacks {
        w.record(&RecordRef::Stack(k, v))?;
    }
    for id in removed {
        w.record(&RecordRef::Removed(id))?;
    }
    for p in removed_peers {
        w.record(&RecordRef::RemovedPeer(p))?;
    }
    let desc = w.finish(index, term)?;
    store.put_image_entry(&ImageEntry {
        desc,
        complete: true,
        received: false,
    })?;
    Ok(desc)
}

/// Reads an image's stream chunk by chunk, checking each chunk and, at the end, the whole.
struct Reader<'a> {
    store: &'a SledStorage,
    desc: Descriptor,
    next: u32,
    cur: Vec<u8>,
    pos: usize,
    crc: crc32fast::Hasher,
    size: u64,
}

impl Reader<'_> {
    fn new(store: &SledStorage, desc: Descriptor) -> Reader<'_> {
        Reader {
            store,
            desc,
            next: 0,
            cur: Vec::new(),
            pos: 0,
            crc: crc32fast::Hasher::new(),
            size: 0,
        }
    }

    /// The next chunk, or `None` past the last.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ImageError> {
        let id = self.desc.id;
        if self.next >= self.desc.chunks {
            return Ok(None);
        }
        let seq = self.next;
        let chunk = self
            .store
            .chunk(id, seq)?
            .ok_or_else(|| bad(id, format!("chunk {seq} is missing")))?;
        if chunk.len() != self.desc.chunk_len(seq) {
            return Err(bad(id, format!("chunk {seq} has {} bytes", chunk.len())));
        }
        self.crc.update(&chunk);
        self.size += chunk.len() as u64;
        self.next += 1;
        Ok(Some(chunk))
    }

    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), ImageError> {
        let mut done = 0;
        while done < out.len() {
            if self.pos == self.cur.len() {
                self.cur = self
                    .next_chunk()?
                    .ok_or_else(|| bad(self.desc.id, "the stream ends inside a record"))?;
                self.pos = 0;
            }
            let n = (out.len() - done).min(self.cur.len() - self.pos);
            out[done..done + n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
        }
        Ok(())
    }

    fn record(&mut self) -> Result<Record, ImageError> {
        let mut len = [0; 4];
        self.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > codec::MAX_FRAME {
            return Err(bad(self.desc.id, format!("record of {len} bytes")));
        }
        let mut frame = vec![0; len];
        self.read_exact(&mut frame)?;
        Ok(codec::decode(&frame)?)
    }

    /// After `End`: nothing may follow, and the whole must match the descriptor.
    fn finish(mut self) -> Result<(), ImageError> {
        let id = self.desc.id;
        if self.pos != self.cur.len() || self.next_chunk()?.is_some() {
            return Err(bad(id, "bytes after the end record"));
        }
        if self.size != self.desc.size || self.crc.finalize() != self.desc.crc {
            return Err(bad(id, "checksum or size mismatch"));
        }
        Ok(())
    }
}

/// Rebuilds the state from the complete image `desc`, record by record.
pub fn restore(store: &SledStorage, desc: &Descriptor) -> Result<ClusterState, ImageError> {
    let id = desc.id;
    match store.image_entry(id)? {
        Some(e) if e.complete && e.desc == *desc => {}
        _ => return Err(bad(id, "not stored complete")),
    }
    let mut r = Reader::new(store, *desc);
    let mut state = match r.record()? {
        Record::Rest(rest) => *rest,
        _ => return Err(bad(id, "does not start with the state's header")),
    };
    let mut records: u64 = 1;
    loop {
        let rec = r.record()?;
        records += 1;
        match rec {
            Record::Rest(_) => return Err(bad(id, "a second header")),
            Record::Node(k, v) => {
                state.nodes.insert(k, v);
            }
            Record::Service(k, v) => {
                state.services.insert(k, v);
            }
            Record::Task(k, v) => {
                state.tasks.insert(k, v);
            }
            Record::Stack(k, v) => {
                state.stacks.insert(k, v);
            }
            Record::Removed(k) => {
                state.removed.insert(k);
            }
            Record::RemovedPeer(p) => {
                state.removed_peers.insert(p);
            }
            Record::End { records: n } => {
                if n != records || n != desc.records {
                    return Err(bad(id, format!("{records} records, the end says {n}")));
                }
                break;
            }
        }
    }
    r.finish()?;
    Ok(state)
}

/// Reads every chunk of (possibly incomplete) image `desc` in order and checks the whole
/// stream's size and CRC against the descriptor.
fn verify(store: &SledStorage, desc: &Descriptor) -> Result<(), ImageError> {
    let mut r = Reader::new(store, *desc);
    while r.next_chunk()?.is_some() {}
    if r.size != desc.size || r.crc.finalize() != desc.crc {
        return Err(bad(desc.id, "checksum or size mismatch"));
    }
    Ok(())
}

/// In-memory transports (the simulation, tests): copies complete image `desc` from `from`
/// into `to` through the same staging steps the network fetcher uses. `Ok(false)`: `from`
/// no longer has it.
pub fn copy_image(
    from: &SledStorage,
    to: &SledStorage,
    desc: &Descriptor,
) -> Result<bool, ImageError> {
    let source = SnapshotStore::new(from.clone());
    let sink = SnapshotStore::new(to.clone());
    for seq in sink.begin(desc)? {
        match source.serve(desc.id, seq)? {
            Some(bytes) => sink.put(desc, seq, &bytes)?,
            None => {
                sink.discard(desc.id)?;
                return Ok(false);
            }
        }
    }
    sink.finish(desc)?;
    Ok(true)
}

/// The image side of a node's Raft storage, for the transport: serve chunks of complete
/// images, stage a received one (resuming what is already stored), verify it. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotStore {
    store: SledStorage,
}

impl SnapshotStore {
    pub fn new(store: SledStorage) -> Self {
        SnapshotStore { store }
    }

    /// Chunk `seq` of complete image `id` (`None`: no such image or chunk any more). Pins
    /// the image so a newer snapshot does not delete it under the reader.
    pub fn serve(&self, id: u64, seq: u32) -> Result<Option<Vec<u8>>, ImageError> {
        match self.store.image_entry(id)? {
            Some(e) if e.complete && seq < e.desc.chunks => {}
            _ => return Ok(None),
        }
        self.store.pin_image(id);
        Ok(self.store.chunk(id, seq)?)
    }

    /// The image the stored snapshot names, if any.
    pub fn current(&self) -> Result<Option<Descriptor>, ImageError> {
        Ok(self.store.current_image()?)
    }

    /// Index of the snapshot this node has installed or taken (0: none).
    pub fn installed_index(&self) -> Result<u64, ImageError> {
        Ok(self.store.snapshot_metadata()?.index)
    }

    /// Whether image `desc` is stored complete (received and verified).
    pub fn is_complete(&self, desc: &Descriptor) -> Result<bool, ImageError> {
        Ok(self
            .store
            .image_entry(desc.id)?
            .is_some_and(|e| e.complete && e.desc == *desc))
    }

    /// Starts or resumes receiving `desc`: returns the chunk numbers still missing (none if
    /// it is complete). Unfinished receptions of other images are dropped (one at a time).
    pub fn begin(&self, desc: &Descriptor) -> Result<Vec<u32>, ImageError> {
        desc.check().map_err(|e| bad(desc.id, e))?;
        let installed = self.installed_index()?;
        for e in self.store.image_entries()? {
            if e.desc.id != desc.id && e.received && !e.complete && e.desc.index > installed {
                self.store.delete_image(e.desc.id)?;
            }
        }
        let staging = ImageEntry {
            desc: *desc,
            complete: false,
            received: true,
        };
        match self.store.image_entry(desc.id)? {
            Some(e) if e.desc == *desc && e.complete => return Ok(Vec::new()),
            Some(e) if e.desc == *desc && e.received => {}
            Some(e) if !e.received => {
                // This node's own image under that id (it cannot be the same snapshot from
                // another leader): leave it alone.
                return Err(bad(desc.id, "the id of an image this node is writing"));
            }
            Some(_) => {
                self.store.delete_image(desc.id)?;
                self.store.put_image_entry(&staging)?;
            }
            None => self.store.put_image_entry(&staging)?,
        }
        let mut missing = Vec::new();
        for seq in 0..desc.chunks {
            if !self.store.has_chunk(desc.id, seq)? {
                missing.push(seq);
            }
        }
        Ok(missing)
    }

    /// Stores chunk `seq` of `desc` (its length must be the one the descriptor implies).
    pub fn put(&self, desc: &Descriptor, seq: u32, bytes: &[u8]) -> Result<(), ImageError> {
        if seq >= desc.chunks || bytes.len() != desc.chunk_len(seq) {
            return Err(bad(
                desc.id,
                format!("chunk {seq} of {} bytes does not fit", bytes.len()),
            ));
        }
        Ok(self.store.put_chunk(desc.id, seq, bytes)?)
    }

    /// Every chunk is in: checks the whole image and marks it complete. A mismatch deletes
    /// it (the next attempt starts over) and is an error.
    pub fn finish(&self, desc: &Descriptor) -> Result<(), ImageError> {
        if let Err(e) = verify(&self.store, desc) {
            self.discard(desc.id)?;
            return Err(e);
        }
        self.store.put_image_entry(&ImageEntry {
            desc: *desc,
            complete: true,
            received: true,
        })?;
        Ok(())
    }

    /// Drops image `id` unless it is the installed one.
    pub fn discard(&self, id: u64) -> Result<(), ImageError> {
        if self.store.current_image()?.is_some_and(|c| c.id == id) {
            return Ok(());
        }
        Ok(self.store.delete_image(id)?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use skein_protocol::{ServiceSpec, TaskState, TaskStatus};

    fn task(i: usize, pad: usize) -> Task {
        let mut spec = ServiceSpec::new("web", "nginx");
        spec.env.insert("PAD".into(), "x".repeat(pad));
        Task {
            id: format!("t{i:07}"),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: Some(i as u64),
            node_id: Some("n1".into()),
            spec_version: 1,
            spec,
            desired_state: TaskState::Running,
            status: TaskStatus::default(),
            created_at: i as u64,
            restarts: vec![],
        }
    }

    pub(crate) fn state(tasks: usize, pad: usize) -> ClusterState {
        let mut s = ClusterState {
            cluster_id: "c1".into(),
            ..Default::default()
        };
        for i in 0..tasks {
            let t = task(i, pad);
            s.tasks.insert(t.id.clone(), t);
        }
        s.removed.insert("gone".into());
        s.removed_peers.insert("12D3gone".into());
        s
    }

    fn open() -> (tempfile::TempDir, SledStorage) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::tests::reopen(dir.path());
        (dir, SledStorage::open(&db).unwrap())
    }

    fn chunk_key(id: u64, seq: u32) -> Vec<u8> {
        [&id.to_be_bytes()[..], &seq.to_be_bytes()].concat()
    }

    #[test]
    fn images_round_trip_in_bounded_chunks() {
        let (_d, s) = open();
        // ~3.3 MB: four chunks, records spanning chunk boundaries.
        let st = state(3000, 1000);
        let desc = write_image(&s, 1, 10, 2, &st).unwrap();
        assert_eq!(desc.chunks, 4);
        assert_eq!(desc.records, 3000 + 4);
        for seq in 0..desc.chunks {
            let c = s.chunk(desc.id, seq).unwrap().unwrap();
            assert!(c.len() <= CHUNK_SIZE as usize);
            assert_eq!(c.len(), desc.chunk_len(seq));
        }
        assert_eq!(restore(&s, &desc).unwrap(), st);
        // Same snapshot again: same id, reused.
        assert_eq!(write_image(&s, 1, 10, 2, &st).unwrap(), desc);
        // The descriptor round-trips, and legacy data is told apart.
        assert_eq!(Descriptor::decode(&desc.encode()), Some(Ok(desc)));
        assert_eq!(Descriptor::decode(&codec::encode(&st).unwrap()), None);
        let empty = ClusterState::default();
        let d = write_image(&s, 1, 11, 2, &empty).unwrap();
        assert_eq!((d.chunks, d.records), (1, 2));
        assert_eq!(restore(&s, &d).unwrap(), empty);
    }

    #[test]
    fn corruption_is_detected_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::tests::reopen(dir.path());
        let s = SledStorage::open(&db).unwrap();
        let chunks = db.open_tree(crate::raft::storage::CHUNK_TREE).unwrap();
        let st = state(1500, 1000);
        let desc = write_image(&s, 1, 5, 1, &st).unwrap();
        // A flipped byte inside a chunk: that chunk's CRC.
        let mut c = s.chunk(desc.id, 1).unwrap().unwrap();
        c[100] ^= 1;
        s.put_chunk(desc.id, 1, &c).unwrap();
        // Chunk CRC rewritten to match: the whole-image CRC still catches it.
        assert!(matches!(
            restore(&s, &desc),
            Err(ImageError::Bad { .. }) | Err(ImageError::Codec(_))
        ));
        assert!(verify(&s, &desc).is_err());
        // A descriptor that lies about its shape is refused before anything is stored.
        let mut lie = desc;
        lie.chunks = 1;
        assert!(lie.check().is_err());
        assert!(SnapshotStore::new(s.clone()).begin(&lie).is_err());
        let mut huge = desc;
        huge.size = MAX_IMAGE_SIZE + 1;
        assert!(huge.check().is_err());
        // A missing chunk.
        chunks.remove(chunk_key(desc.id, 0)).unwrap();
        assert!(restore(&s, &desc).is_err());
    }

    #[test]
    fn staging_resumes_and_verifies() {
        let (_d1, from) = open();
        let (_d2, to) = open();
        let st = state(2500, 1000);
        let desc = write_image(&from, 1, 7, 1, &st).unwrap();
        assert!(desc.chunks >= 3);
        let source = SnapshotStore::new(from.clone());
        let sink = SnapshotStore::new(to.clone());
        let all: Vec<u32> = (0..desc.chunks).collect();
        assert_eq!(sink.begin(&desc).unwrap(), all);
        // Two chunks arrive, then the transfer is cut.
        for seq in [0, 2] {
            sink.put(&desc, seq, &source.serve(desc.id, seq).unwrap().unwrap())
                .unwrap();
        }
        // A wrong length is refused.
        assert!(sink.put(&desc, 1, &[0; 10]).is_err());
        // Resuming asks only for what is missing.
        let missing = sink.begin(&desc).unwrap();
        assert_eq!(
            missing,
            all.iter()
                .copied()
                .filter(|&s| s != 0 && s != 2)
                .collect::<Vec<_>>()
        );
        for seq in missing {
            sink.put(&desc, seq, &source.serve(desc.id, seq).unwrap().unwrap())
                .unwrap();
        }
        sink.finish(&desc).unwrap();
        assert!(sink.is_complete(&desc).unwrap());
        assert_eq!(restore(&to, &desc).unwrap(), st);

        // A corrupt staged image fails verification and is dropped.
        let desc2 = write_image(&from, 1, 8, 1, &state(10, 10)).unwrap();
        let mut lie = desc2;
        lie.crc ^= 1;
        assert!(copy_image(&from, &to, &lie).is_err());
        assert!(to.image_entry(lie.id).unwrap().is_none());
        // An image the source no longer has.
        let mut gone = desc2;
        gone.id = 99;
        assert!(!copy_image(&from, &to, &gone).unwrap());
        assert!(copy_image(&from, &to, &desc2).unwrap());
    }

    #[test]
    fn receiving_never_drops_an_image_this_node_is_writing_and_strays_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::tests::reopen(dir.path());
        let s = SledStorage::open(&db).unwrap();
        let sink = SnapshotStore::new(s.clone());
        // A background snapshot in progress (recorded incomplete), above the installed index.
        let own = Descriptor {
            id: image_id(1, 50, 2),
            index: 50,
            term: 2,
            size: 10,
            chunks: 1,
            chunk_size: CHUNK_SIZE,
            crc: 0,
            records: 0,
        };
        s.put_image_entry(&ImageEntry {
            desc: own,
            complete: false,
            received: false,
        })
        .unwrap();
        s.put_chunk(own.id, 0, b"0123456789").unwrap();
        // A transfer of another snapshot starts, then a newer one replaces it.
        let (_d2, from) = open();
        let a = write_image(&from, 2, 60, 2, &state(5, 5)).unwrap();
        let b = write_image(&from, 2, 70, 2, &state(6, 5)).unwrap();
        assert_eq!(sink.begin(&a).unwrap(), vec![0]);
        assert_eq!(sink.begin(&b).unwrap(), vec![0]);
        assert!(
            s.image_entry(a.id).unwrap().is_none(),
            "the abandoned transfer is dropped"
        );
        assert!(
            s.image_entry(own.id).unwrap().is_some(),
            "the local build is kept"
        );
        assert!(s.has_chunk(own.id, 0).unwrap());
        // Chunks with no record (a transfer cut off mid-write) go at the next open.
        s.put_chunk(a.id, 3, b"stray").unwrap();
        drop((sink, s));
        let s = SledStorage::open(&db).unwrap();
        assert!(!s.has_chunk(a.id, 3).unwrap());
        assert!(s.has_chunk(own.id, 0).unwrap());
    }
}
