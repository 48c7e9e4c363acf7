//! The journal: a small write-ahead file next to the ledger that makes a group commit durable
//! with one sequential write and one `fdatasync`.
//!
//! Why: a durable redb commit rewrites the B-tree path of every table it touches and syncs
//! those scattered pages: 15 to 17 pages and about 270 µs for one `start` on the 2-core VM of
//! BENCHMARKS.md. Appending the batch's operations to this file and syncing it costs one page
//! and about 140 µs there; the batch is then committed to redb without a sync
//! (`Durability::None`), and a later durable redb commit, the *checkpoint*, makes everything
//! durable in redb at once and ends the journal's *epoch*. Opening the ledger replays the
//! entries redb does not have yet, so an acknowledged write survives `kill -9` and power loss
//! either way.
//!
//! # Layout
//!
//! Block 0 is the epoch header; entries follow, each starting on a [`BLOCK_BYTES`] boundary and
//! padded with zeros to the next one, so that an append never rewrites a block holding an
//! earlier entry:
//!
//! ```text
//! header: magic "CLJE" | ledger id u64 | epoch id u64 | first seq u64 | crc32 u32
//! entry:  magic "CLJ\x02" | payload length u32 | epoch id u64 | seq u64 | crc32 u32 | payload
//! ```
//!
//! all little-endian. Each CRC covers the bytes before it (and an entry's covers its payload).
//! The payload is a codec record: the batch's time, the default timeout it ran with, its
//! operations, and its [`Proof`]: the writer state before and after it and which of its
//! operations succeeded, which a replay must reproduce exactly.
//!
//! # Epochs: the ledger file knows its journal
//!
//! An epoch is one run of journaled commits between two durable redb commits. It starts with
//! the first write after a checkpoint (or after opening): a fresh random epoch id is written
//! into the header block and synced, and then that first batch is committed *durably* to redb
//! together with the epoch record (`meta` key `journal_epoch`: the epoch id and the sequence
//! number of its first entry). Every later batch of the epoch is an entry. A checkpoint (a
//! durable redb commit: the journal is full, a batch too big for it, [`crate::Ledger::checkpoint`],
//! a clean close) removes the epoch record in the same commit, and the next write starts a new
//! epoch. So while the record exists, the ledger file's durable state is the epoch's start and
//! every entry of the epoch may hold acknowledged writes: the open must find this journal, with
//! this epoch, or refuse (see [`read_pending`]). A copy of the ledger file starts its own epoch
//! at its next write, so the journals of two copies never replay into each other.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::Op;
use crate::storage::codec::{self, MAX_JOURNAL_PAYLOAD_BYTES};
use crate::storage::journal_watch::NameWatch;

/// Entries start on this boundary: one page, the unit the disk writes atomically at best.
pub(crate) const BLOCK_BYTES: u64 = 4096;
/// The journal never grows past this; a batch that does not fit is committed as a checkpoint.
pub(crate) const JOURNAL_CAPACITY_BYTES: u64 = 8 * 1024 * 1024;
/// The file grows in zero-filled steps, so that an append overwrites allocated blocks and
/// `fdatasync` has no file-size metadata to write. The first step is this size, and each step
/// doubles the file, so a short session (a CLI call) writes little and a long one grows the
/// file about ten times up to its capacity.
const FIRST_GROW_BYTES: u64 = 16 * 1024;
const ENTRY_MAGIC: [u8; 4] = *b"CLJ\x02";
const ENTRY_HEADER_BYTES: usize = 28;
const EPOCH_MAGIC: [u8; 4] = *b"CLJE";
const EPOCH_HEADER_BYTES: usize = 32;

/// What a batch produced, recorded in its entry so that a replay can prove it did the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Proof {
    /// The writer state the batch ran on: the next txn id, the last timestamp, the chain CRC.
    pub before: (u64, u64, u32),
    /// The writer state after it.
    pub after: (u64, u64, u32),
    /// Bit `i` is set when operation `i` succeeded.
    pub ok_bits: Vec<u8>,
}

impl Proof {
    /// The bitmap of which results are `Ok`.
    pub fn ok_bits<T, E>(results: &[Result<T, E>]) -> Vec<u8> {
        let mut bits = vec![0u8; results.len().div_ceil(8)];
        for (i, r) in results.iter().enumerate() {
            if r.is_ok() {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        bits
    }
}

/// One replayable batch.
#[derive(Debug, Deserialize)]
pub(crate) struct Batch {
    /// The time the batch ran at.
    pub now_ms: u64,
    /// The ledger's default generation timeout when it ran.
    pub default_timeout_ms: u64,
    /// The ledger's refund grace when it ran.
    pub refund_grace_ms: u64,
    pub ops: Vec<Op>,
    pub proof: Proof,
    /// The ledger's grant notice window when it ran (`None`: off). Last, so that an entry
    /// written before it existed fails to decode as this struct at its very end, and is read
    /// as a [`BatchBeforeNotices`] instead.
    pub grant_expiring_notice_ms: Option<u64>,
}

/// A batch as builds from before grant notices wrote it: no notice window. Such a build ran
/// with none, so replaying its entries without one does exactly what it did.
#[derive(Debug, Deserialize)]
struct BatchBeforeNotices {
    now_ms: u64,
    default_timeout_ms: u64,
    refund_grace_ms: u64,
    ops: Vec<Op>,
    proof: Proof,
}

/// Decode a journal payload: this build's batch, or one a build from before grant notices
/// left in the journal (an upgrade after a crash), which replays with notices off.
pub(crate) fn decode_batch(seq: u64, payload: &[u8]) -> Result<Batch, Error> {
    codec::decode_journal::<Batch>(seq, payload).or_else(|e| {
        match codec::decode_journal::<BatchBeforeNotices>(seq, payload) {
            Ok(b) => Ok(Batch {
                now_ms: b.now_ms,
                default_timeout_ms: b.default_timeout_ms,
                refund_grace_ms: b.refund_grace_ms,
                ops: b.ops,
                proof: b.proof,
                grant_expiring_notice_ms: None,
            }),
            Err(_) => Err(e),
        }
    })
}

#[derive(Serialize)]
struct BatchRef<'a> {
    now_ms: u64,
    default_timeout_ms: u64,
    refund_grace_ms: u64,
    ops: &'a [Op],
    proof: &'a Proof,
    grant_expiring_notice_ms: Option<u64>,
}

/// Encode a batch as a journal payload.
pub(crate) fn encode_batch(
    now_ms: u64,
    (default_timeout_ms, refund_grace_ms, grant_expiring_notice_ms): (u64, u64, Option<u64>),
    ops: &[Op],
    proof: &Proof,
) -> Vec<u8> {
    codec::encode(&BatchRef {
        now_ms,
        default_timeout_ms,
        refund_grace_ms,
        ops,
        proof,
        grant_expiring_notice_ms,
    })
}

/// The journal of the ledger at `ledger`: `<file name>.journal` next to it.
pub(crate) fn path_for(ledger: &Path) -> PathBuf {
    let mut name = ledger.file_name().unwrap_or_default().to_os_string();
    name.push(".journal");
    ledger.with_file_name(name)
}

/// A random 64-bit id: for a new ledger, and for each journal epoch.
pub(crate) fn random_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

fn entry_bytes(payload_len: usize) -> u64 {
    (ENTRY_HEADER_BYTES + payload_len).div_ceil(BLOCK_BYTES as usize) as u64 * BLOCK_BYTES
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Storage {
        message: format!("journal `{}`: {what}: {e}", path.display()),
    }
}

/// Open the journal file for writing, creating it if needed, and lock it: used when the
/// ledger's own locked handle is gone (the file was deleted, moved or replaced under it). The
/// one place the write side opens the file by name; see [`super::journal_file`] for the rules.
/// A file found there (someone renamed theirs over the journal) is used only if it is empty or
/// this ledger's own, `ledger_id`'s: anything else is [`Error::ForeignFile`], left untouched.
fn open_for_writing(path: &Path, ledger_id: u64) -> Result<File, Error> {
    use super::journal_file::{check_owner, lock_exclusive, open_checked, Access};
    let file = match open_checked(path, Access::Write, false)? {
        Some(f) => f,
        None => match open_checked(path, Access::Write, true)? {
            Some(f) => f,
            None => open_checked(path, Access::Write, false)?.ok_or_else(|| {
                io_error(
                    path,
                    "cannot create it",
                    std::io::ErrorKind::NotFound.into(),
                )
            })?,
        },
    };
    check_owner(&file, path, Some(ledger_id))?;
    lock_exclusive(&file, path, path)?;
    Ok(file)
}

/// Open the journal file to read it at open time; `Ok(None)` when there is none.
fn open_for_reading(path: &Path) -> Result<Option<File>, Error> {
    super::journal_file::open_checked(path, super::journal_file::Access::Read, false)
}

/// What the first bytes of a journal file say about whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// They do not start like a journal's header: not a journal.
    Foreign,
    /// A journal header cut before its ledger id: a torn first write, nothing to replay.
    Cut,
    /// The journal of the ledger with this id.
    Ledger(u64),
}

/// Whose journal a file starting with `block` (its first block, not all zeros) is.
pub(crate) fn owner(block: &[u8]) -> Owner {
    let magic = block.len().min(EPOCH_MAGIC.len());
    if block[..magic] != EPOCH_MAGIC[..magic] {
        return Owner::Foreign;
    }
    match block.get(4..12).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        Some(id) => Owner::Ledger(u64::from_le_bytes(id)),
        None => Owner::Cut,
    }
}

/// Remove the journal file of a ledger whose epoch was just closed by a durable commit (after a
/// replay): nothing in it is needed any more, and [`read_pending`] has checked that it is this
/// ledger's own journal.
pub(crate) fn remove_replayed(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, "cannot remove it", e)),
    }
}

/// What the ledger file says about its journal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected {
    pub ledger_id: u64,
    pub epoch: u64,
    pub first_seq: u64,
    /// The last entry redb holds (`meta` `journal_seq`): at least `first_seq - 1`.
    pub applied_seq: u64,
}

/// The entries of the open epoch that redb lacks, in order.
#[derive(Debug)]
pub(crate) struct Pending {
    pub batches: Vec<(u64, Batch)>,
}

/// Why a pending journal cannot be replayed, and what could be read before the problem: the
/// intact entries an operator's explicit discard still replays.
#[derive(Debug)]
pub(crate) struct Unreadable {
    /// The typed error the open fails with.
    pub error: Error,
    /// The intact, consecutive entries before the problem that redb lacks.
    pub intact: Vec<(u64, Batch)>,
    /// The last sequence number known to exist past the problem (an intact later entry).
    pub last_seen_seq: Option<u64>,
}

/// One block boundary's worth of parsing.
enum Frame<'a> {
    /// An intact entry of the epoch: its seq, its payload and its size on disk.
    Entry {
        seq: u64,
        payload: &'a [u8],
        bytes: u64,
    },
    /// Anything else: zeros, a torn or damaged entry, an older epoch's entry, the end.
    Other,
}

fn frame_at(bytes: &[u8], offset: u64, epoch: u64) -> Frame<'_> {
    let start = offset as usize;
    let Some(header) = bytes.get(start..start + ENTRY_HEADER_BYTES) else {
        return Frame::Other;
    };
    let u32_at = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap_or_default());
    let u64_at = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or_default());
    let payload_len = u32_at(4) as usize;
    if header[..4] != ENTRY_MAGIC || payload_len > MAX_JOURNAL_PAYLOAD_BYTES || u64_at(8) != epoch {
        return Frame::Other;
    }
    let size = entry_bytes(payload_len);
    let Some(payload) =
        bytes.get(start + ENTRY_HEADER_BYTES..start + ENTRY_HEADER_BYTES + payload_len)
    else {
        return Frame::Other;
    };
    if offset + size > bytes.len() as u64 {
        return Frame::Other;
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[..24]);
    crc.update(payload);
    if crc.finalize() != u32_at(24) {
        return Frame::Other;
    }
    Frame::Entry {
        seq: u64_at(16),
        payload,
        bytes: size,
    }
}

fn epoch_header(ledger_id: u64, epoch: u64, first_seq: u64) -> [u8; EPOCH_HEADER_BYTES] {
    let mut h = [0u8; EPOCH_HEADER_BYTES];
    h[..4].copy_from_slice(&EPOCH_MAGIC);
    h[4..12].copy_from_slice(&ledger_id.to_le_bytes());
    h[12..20].copy_from_slice(&epoch.to_le_bytes());
    h[20..28].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The (ledger id, epoch id, first seq) of an intact header, or `None`.
fn parse_epoch_header(bytes: &[u8]) -> Option<(u64, u64, u64)> {
    let h = bytes.get(..EPOCH_HEADER_BYTES)?;
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(h[28..32].try_into().unwrap_or_default());
    (h[..4] == EPOCH_MAGIC && crc32fast::hash(&h[..28]) == crc)
        .then(|| (u64_at(4), u64_at(12), u64_at(20)))
}

/// Read the open epoch's journal for the ledger file at `ledger`, whose `meta` says `expect`.
///
/// The rules, so that an open never comes back with an older state in silence:
/// - the journal must exist and its header must name this ledger, this epoch and its first
///   seq; otherwise it is missing, another copy's, another ledger's, or an older one;
/// - entries are taken while they are intact, of this epoch, and consecutive from the first;
/// - where they stop, the rest of the file must hold no intact entry of this epoch with a later
///   seq: only the last entry can be torn by a crash, so a damaged entry followed by an intact
///   one is damage, and the open fails with `Corruption` naming the entry;
/// - the entries must reach at least `applied_seq`, the last one redb has seen.
///
/// Nothing is written: the caller replays the batches, and only then closes the epoch.
pub(crate) fn read_pending(
    ledger: &Path,
    journal: &Path,
    expect: &Expected,
) -> Result<Pending, Box<Unreadable>> {
    let unreadable = |error: Error, intact: Vec<(u64, Batch)>, last_seen_seq: Option<u64>| {
        Box::new(Unreadable {
            error,
            intact,
            last_seen_seq,
        })
    };
    let mismatch = |problem: String| {
        unreadable(
            Error::JournalMismatch {
                ledger: ledger.display().to_string(),
                journal: journal.display().to_string(),
                problem,
            },
            Vec::new(),
            None,
        )
    };
    let mut bytes = Vec::new();
    match open_for_reading(journal) {
        Ok(Some(mut f)) => {
            if let Err(e) = f.read_to_end(&mut bytes) {
                return Err(unreadable(
                    io_error(journal, "cannot read it", e),
                    vec![],
                    None,
                ));
            }
        }
        Ok(None) => {
            return Err(mismatch(format!(
                "the journal is missing (deleted, moved, or never copied with the ledger file); \
                 the ledger file expects journal epoch {:016x} from entry {}",
                expect.epoch, expect.first_seq
            )))
        }
        // A symlink or another non-regular file there is a `ForeignFile`, never read through.
        Err(e) => return Err(unreadable(e, vec![], None)),
    }
    match parse_epoch_header(&bytes) {
        None => {
            return Err(mismatch(format!(
                "the file there has no intact journal header ({} bytes): it was emptied, \
                 damaged, or replaced",
                bytes.len()
            )))
        }
        Some((id, _, _)) if id != expect.ledger_id => {
            return Err(mismatch(format!(
                "the journal there belongs to another ledger (id {id:016x}; this one is {:016x})",
                expect.ledger_id
            )))
        }
        Some((_, epoch, first)) if epoch != expect.epoch || first != expect.first_seq => {
            return Err(mismatch(format!(
                "the journal there is of epoch {epoch:016x} from entry {first}, and the ledger \
                 file expects epoch {:016x} from entry {}: it is the journal of a copy of this \
                 ledger, or an older or newer one of its own",
                expect.epoch, expect.first_seq
            )))
        }
        Some(_) => {}
    }
    let mut batches = Vec::new();
    let mut offset = BLOCK_BYTES;
    let mut next_seq = expect.first_seq;
    while let Frame::Entry {
        seq,
        payload,
        bytes: size,
    } = frame_at(&bytes, offset, expect.epoch)
    {
        if seq != next_seq {
            break;
        }
        // The frame is intact, so the payload is what this ledger wrote: failing to decode it
        // is damage that must stop the open, not a tail to ignore.
        let batch: Batch = match decode_batch(seq, payload) {
            Ok(b) => b,
            Err(e) => {
                let error = match e {
                    Error::Corruption { table, key, detail } => Error::Corruption {
                        table,
                        key,
                        detail: format!(
                            "{detail}; the journal `{}` holds writes the ledger file does not \
                             have yet; to open the ledger without them, accepting their loss, \
                             run `credit-ledger --db {} recover --discard-journal`",
                            journal.display(),
                            ledger.display()
                        ),
                    },
                    other => other,
                };
                return Err(unreadable(error, batches, None));
            }
        };
        if seq > expect.applied_seq {
            batches.push((seq, batch));
        }
        next_seq += 1;
        offset += size;
    }
    // Where the chain stops, nothing of this epoch may follow.
    let mut at = offset;
    let mut later = None;
    while at < bytes.len() as u64 {
        if let Frame::Entry { seq, .. } = frame_at(&bytes, at, expect.epoch) {
            if seq >= next_seq {
                later = Some(later.map_or(seq, |l: u64| l.max(seq)));
            }
        }
        at += BLOCK_BYTES;
    }
    if let Some(last) = later {
        let error = Error::Corruption {
            table: "journal",
            key: next_seq.to_string(),
            detail: format!(
                "entry {next_seq} at byte {offset} of the journal `{}` is damaged or missing, \
                 and entries up to {last} after it are intact: a crash only tears the last \
                 entry, so this is damage, and the entries after it hold acknowledged writes; \
                 the journal was left as it is; to open the ledger without them, accepting \
                 their loss, run `credit-ledger --db {} recover --discard-journal`",
                journal.display(),
                ledger.display()
            ),
        };
        return Err(unreadable(error, batches, Some(last)));
    }
    let last_seq = next_seq - 1;
    if last_seq < expect.applied_seq {
        return Err(mismatch(format!(
            "its entries end at {last_seq}, before entry {} that the ledger file already \
             holds: it is an older copy of the journal",
            expect.applied_seq
        )));
    }
    Ok(Pending { batches })
}

/// An open journal. Only the writer uses it, under the writer lock.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    /// The ledger's locked journal file (see [`super::journal_file`]) and the watch that
    /// notices when it loses its name; `None` for a journal
    /// made without one, or after the file was deleted under the ledger, until the next epoch
    /// opens it by name.
    file: Option<(File, NameWatch)>,
    ledger_id: u64,
    /// The open epoch, if any: its id. Only then does an append count.
    epoch: Option<u64>,
    /// Where the next entry goes.
    write_offset: u64,
    /// Bytes at the start of the file known to be allocated (zero-filled or written).
    allocated_bytes: u64,
    /// The sequence number of the last entry written, or of the last one redb holds.
    last_seq: u64,
}

impl Journal {
    /// The journal at `path` of the ledger `ledger_id`, with no epoch open and no file opened
    /// yet; `last_seq` is the last entry redb holds.
    pub fn new(path: PathBuf, ledger_id: u64, last_seq: u64) -> Journal {
        Journal {
            path,
            file: None,
            ledger_id,
            epoch: None,
            write_offset: BLOCK_BYTES,
            allocated_bytes: 0,
            last_seq,
        }
    }

    /// Use `file`, the journal opened and locked by the ledger (see
    /// [`JournalFile`](super::journal_file::JournalFile)), instead of opening it by name at the
    /// first epoch.
    pub fn with_file(mut self, file: File) -> Result<Journal, Error> {
        let len = file
            .metadata()
            .map_err(|e| io_error(&self.path, "cannot read its size", e))?
            .len();
        self.allocated_bytes = len - len % BLOCK_BYTES;
        self.adopt(file)?;
        Ok(self)
    }

    /// Write into `file` from now on, and watch its name.
    fn adopt(&mut self, file: File) -> Result<(), Error> {
        let watch = NameWatch::new(&self.path, &file)?;
        self.file = Some((file, watch));
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of the open epoch, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// The sequence number of the last entry written.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether a payload of `payload_len` bytes fits in what is left of the open epoch.
    pub fn fits(&self, payload_len: usize) -> bool {
        payload_len <= MAX_JOURNAL_PAYLOAD_BYTES
            && self.write_offset + entry_bytes(payload_len) <= JOURNAL_CAPACITY_BYTES
    }

    /// Write and sync the header of a new epoch whose first entry is [`Self::next_seq`], and
    /// return its id. The caller then commits the epoch record durably to redb; until it does,
    /// [`Self::open_epoch`] is not called and nothing is appended.
    pub fn write_epoch_header(&mut self) -> Result<u64, Error> {
        let epoch = random_id();
        let header = epoch_header(self.ledger_id, epoch, self.next_seq());
        if self.file.is_none() {
            let file = open_for_writing(&self.path, self.ledger_id)?;
            let len = file
                .metadata()
                .map_err(|e| io_error(&self.path, "cannot read its size", e))?
                .len();
            self.allocated_bytes = len - len % BLOCK_BYTES;
            self.adopt(file)?;
            // The file's name must be durable before an entry in it is acknowledged.
            super::sync_folder_of(&self.path)
                .map_err(|e| io_error(&self.path, "cannot sync its folder", e))?;
        }
        let mut block = vec![0u8; BLOCK_BYTES as usize];
        block[..EPOCH_HEADER_BYTES].copy_from_slice(&header);
        if self.allocated_bytes < FIRST_GROW_BYTES {
            // A new file: the header and the first zero-filled step in one write and one sync.
            block.resize(FIRST_GROW_BYTES as usize, 0);
            let file = self.file()?;
            file.write_all_at(&block, 0)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error(&self.path, "cannot write its header", e))?;
            self.allocated_bytes = FIRST_GROW_BYTES;
        } else {
            let file = self.file()?;
            file.write_all_at(&block, 0)
                .and_then(|()| file.sync_data())
                .map_err(|e| io_error(&self.path, "cannot write its header", e))?;
        }
        Ok(epoch)
    }

    /// The epoch record of `epoch` is durable in redb: appends count from now on.
    pub fn open_epoch(&mut self, epoch: u64) {
        self.epoch = Some(epoch);
        self.write_offset = BLOCK_BYTES;
    }

    /// A durable redb commit removed the epoch record: redb holds every entry, and the next
    /// write starts a new epoch. The file stays open and allocated for it.
    pub fn close_epoch(&mut self) {
        self.epoch = None;
        self.write_offset = BLOCK_BYTES;
    }

    /// Let go of a file that was deleted under the ledger: the next epoch creates a new one.
    pub fn forget_file(&mut self) {
        self.file = None;
        self.allocated_bytes = 0;
    }

    /// Delete the file, if this ledger created or used it: for a clean close, after a
    /// checkpoint closed the epoch. The next open starts a new journal.
    pub fn remove(self) -> Result<(), Error> {
        let Some((file, _)) = self.file else {
            return Ok(());
        };
        drop(file);
        remove_replayed(&self.path)
    }

    /// Append entry `seq` of the open epoch and sync it. When this returns `Ok`, the entry
    /// survives a crash, unless [`Self::lost_name`].
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<(), Error> {
        assert_eq!(seq, self.next_seq(), "journal entries are consecutive");
        assert!(
            self.fits(payload.len()),
            "the caller checks that an entry fits"
        );
        let epoch = self
            .epoch
            .expect("invariant: the caller appends only in an open epoch");
        let total = entry_bytes(payload.len());
        let end = self.write_offset + total;
        if end > self.allocated_bytes {
            self.grow(end)?;
        }
        let mut buf = Vec::with_capacity(total as usize);
        buf.extend_from_slice(&ENTRY_MAGIC);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&epoch.to_le_bytes());
        buf.extend_from_slice(&seq.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&buf);
        crc.update(payload);
        buf.extend_from_slice(&crc.finalize().to_le_bytes());
        buf.extend_from_slice(payload);
        buf.resize(total as usize, 0);
        let file = self.file()?;
        file.write_all_at(&buf, self.write_offset)
            .map_err(|e| io_error(&self.path, "cannot write an entry", e))?;
        // A failed write leaves an entry whose checksum fails: it never counts. A failed sync
        // may or may not have made it durable, and a reopen replays whatever the file holds.
        file.sync_data().map_err(|e| Error::CommitUncertain {
            message: format!(
                "journal `{}`: cannot sync an entry: {e}",
                self.path.display()
            ),
        })?;
        self.write_offset = end;
        self.last_seq = seq;
        Ok(())
    }

    /// Whether the open file lost its name (someone deleted it, renamed it away or replaced it
    /// while the ledger runs): an entry synced into it is then durable nowhere a reopen would
    /// look. Asked after each sync; usually one `read` of an inotify descriptor that finds
    /// nothing (see [`super::journal_watch`]).
    pub fn lost_name(&mut self) -> Result<bool, Error> {
        match &mut self.file {
            Some((file, watch)) => watch.lost_name(file),
            None => Err(self.no_file()),
        }
    }

    /// The open file: there is one once an epoch header was written.
    fn file(&self) -> Result<&File, Error> {
        self.file
            .as_ref()
            .map(|(f, _)| f)
            .ok_or_else(|| self.no_file())
    }

    fn no_file(&self) -> Error {
        Error::Storage {
            message: format!("journal `{}` has no file", self.path.display()),
        }
    }

    /// Make sure the first `end` bytes are allocated.
    fn grow(&mut self, end: u64) -> Result<(), Error> {
        let doubled = (self.allocated_bytes * 2).clamp(FIRST_GROW_BYTES, JOURNAL_CAPACITY_BYTES);
        let target = end.max(doubled);
        let zeros = vec![0u8; (target - self.allocated_bytes) as usize];
        let file = self.file()?;
        file.write_all_at(&zeros, self.allocated_bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(&self.path, "cannot grow it", e))?;
        self.allocated_bytes = target;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(n: usize) -> Vec<Op> {
        (0..n)
            .map(|i| Op::Complete {
                generation_id: format!("g{i}"),
            })
            .collect()
    }

    fn proof(i: u64) -> Proof {
        Proof {
            before: (i, i, 0),
            after: (i + 1, i, 0),
            ok_bits: vec![1],
        }
    }

    #[test]
    fn an_entry_from_before_grant_notices_replays_with_notices_off() {
        #[derive(Serialize)]
        struct Old<'a> {
            now_ms: u64,
            default_timeout_ms: u64,
            refund_grace_ms: u64,
            ops: &'a [Op],
            proof: &'a Proof,
        }
        let old = codec::encode(&Old {
            now_ms: 10,
            default_timeout_ms: 5,
            refund_grace_ms: 6,
            ops: &ops(2),
            proof: &proof(1),
        });
        let b = decode_batch(1, &old).unwrap();
        assert_eq!(
            (b.now_ms, b.default_timeout_ms, b.refund_grace_ms),
            (10, 5, 6)
        );
        assert_eq!((b.ops.len(), b.proof), (2, proof(1)));
        assert_eq!(b.grant_expiring_notice_ms, None);
        let new = encode_batch(10, (5, 6, Some(7)), &ops(2), &proof(1));
        assert_eq!(
            decode_batch(1, &new).unwrap().grant_expiring_notice_ms,
            Some(7)
        );
        // Damage is still damage: neither shape reads a payload cut inside its proof.
        let mut cut = new[..new.len() - 7].to_vec();
        let crc = crc32fast::hash(&cut);
        cut.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_batch(1, &cut),
            Err(Error::Corruption { .. })
        ));
    }

    /// A journal at `path` with an open epoch and entries `first..=last`.
    fn written(path: &Path, first: u64, last: u64) -> (Journal, Expected) {
        let mut j = Journal::new(path.to_path_buf(), 7, first - 1);
        let epoch = j.write_epoch_header().unwrap();
        j.open_epoch(epoch);
        for seq in first..=last {
            let payload = encode_batch(
                seq * 10,
                (5, 5, None),
                &ops(seq as usize % 3 + 1),
                &proof(seq),
            );
            j.append(seq, &payload).unwrap();
        }
        let expect = Expected {
            ledger_id: 7,
            epoch,
            first_seq: first,
            applied_seq: first - 1,
        };
        (j, expect)
    }

    fn read(path: &Path, expect: &Expected) -> Result<Vec<u64>, Error> {
        read_pending(Path::new("l.redb"), path, expect)
            .map(|p| p.batches.iter().map(|(s, _)| *s).collect())
            .map_err(|u| u.error)
    }

    #[test]
    fn entries_read_back_in_order_and_skip_what_redb_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.journal");
        let (_, expect) = written(&path, 5, 9);
        let batches = read_pending(Path::new("l.redb"), &path, &expect).unwrap();
        assert_eq!(batches.batches.len(), 5);
        assert_eq!(batches.batches[4].1.now_ms, 90);
        assert_eq!(batches.batches[4].1.proof, proof(9));
        let held = Expected {
            applied_seq: 7,
            ..expect
        };
        assert_eq!(read(&path, &held).unwrap(), vec![8, 9]);
        // Ending before what redb has seen is an older journal.
        let ahead = Expected {
            applied_seq: 12,
            ..expect
        };
        let r = read(&path, &ahead).unwrap_err();
        assert!(matches!(r, Error::JournalMismatch { .. }), "{r:?}");
    }

    #[test]
    fn a_missing_or_foreign_journal_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.journal");
        let (_, expect) = written(&path, 1, 2);
        let missing = dir.path().join("none.journal");
        assert!(matches!(
            read(&missing, &expect).unwrap_err(),
            Error::JournalMismatch { problem, .. } if problem.contains("missing")
        ));
        for other in [
            Expected {
                epoch: expect.epoch ^ 1,
                ..expect
            },
            Expected {
                ledger_id: 8,
                ..expect
            },
            Expected {
                first_seq: 2,
                applied_seq: 1,
                ..expect
            },
        ] {
            let r = read(&path, &other).unwrap_err();
            assert!(matches!(r, Error::JournalMismatch { .. }), "{other:?}");
        }
    }

    #[test]
    fn only_the_last_entry_may_be_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.journal");
        let (_, expect) = written(&path, 1, 3);
        let bytes = std::fs::read(&path).unwrap();
        let b = BLOCK_BYTES as usize;
        // The last entry (block 3) torn: the two before it count.
        for at in [3 * b + 2, 3 * b + 10, 3 * b + 26, 3 * b + 30] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            assert_eq!(read(&path, &expect).unwrap(), vec![1, 2], "flip at {at}");
        }
        for len in [3 * b, 3 * b + 27, 3 * b + 40] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            assert_eq!(read(&path, &expect).unwrap(), vec![1, 2], "cut at {len}");
        }
        // Entry 2 damaged with entry 3 intact after it: damage, not a tear.
        for at in [2 * b, 2 * b + 17, 2 * b + 40] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            std::fs::write(&path, &damaged).unwrap();
            match read(&path, &expect).unwrap_err() {
                Error::Corruption { table, key, detail } => {
                    assert_eq!((table, key.as_str()), ("journal", "2"));
                    assert!(detail.contains("entries up to 3"), "{detail}");
                }
                other => panic!("flip at {at}: {other:?}"),
            }
        }
        // What an operator's discard keeps: entry 1, and it knows entry 3 existed.
        let mut damaged = bytes.clone();
        damaged[2 * b + 40] ^= 0x01;
        std::fs::write(&path, &damaged).unwrap();
        let u = read_pending(Path::new("l.redb"), &path, &expect).unwrap_err();
        assert_eq!(u.intact.len(), 1);
        assert_eq!(u.last_seen_seq, Some(3));
        // The header damaged: nothing can be trusted.
        let mut damaged = bytes.clone();
        damaged[14] ^= 0x01;
        std::fs::write(&path, &damaged).unwrap();
        assert!(matches!(
            read(&path, &expect).unwrap_err(),
            Error::JournalMismatch { .. }
        ));
    }

    #[test]
    fn a_new_epoch_overwrites_the_header_and_old_entries_never_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.journal");
        let (mut j, _) = written(&path, 1, 4);
        j.close_epoch();
        let epoch = j.write_epoch_header().unwrap();
        j.open_epoch(epoch);
        j.append(5, &encode_batch(50, (5, 5, None), &ops(1), &proof(5)))
            .unwrap();
        let expect = Expected {
            ledger_id: 7,
            epoch,
            first_seq: 5,
            applied_seq: 4,
        };
        // Entries 2..4 of the old epoch are still in blocks 2..4: they end the chain.
        assert_eq!(read(&path, &expect).unwrap(), vec![5]);
        assert!(!j.lost_name().unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(j.lost_name().unwrap());
    }

    #[test]
    fn capacity_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("j"), 1, 0);
        assert!(j.fits(100));
        assert!(!j.fits(MAX_JOURNAL_PAYLOAD_BYTES + 1));
        assert_eq!(entry_bytes(1), BLOCK_BYTES);
        assert_eq!(entry_bytes(4096 - ENTRY_HEADER_BYTES + 1), 2 * BLOCK_BYTES);
        assert!(
            !dir.path().join("j").exists(),
            "no file until an epoch starts"
        );
    }
}
