//! The journal: a small write-ahead file next to the ledger that makes a group commit durable
//! with one sequential write and one `fdatasync`.
//!
//! Why: a durable redb commit rewrites the B-tree path of every table it touches and syncs
//! those scattered pages: 15 to 17 pages and about 270 µs for one `start` on the 2-core VM of
//! BENCHMARKS.md. Appending the batch's operations to this file and syncing it costs one page
//! and about 140 µs there; the batch is then committed to redb without a sync
//! (`Durability::None`), and a later durable redb commit, the *checkpoint*, makes everything
//! durable in redb at once and lets the journal start over. Opening the ledger replays the
//! entries redb does not have yet, so an acknowledged write survives `kill -9` and power loss
//! either way.
//!
//! # Layout
//!
//! The file is a sequence of entries, each starting on a [`BLOCK_BYTES`] boundary and padded
//! with zeros to the next one, so that an append never rewrites a block holding an earlier
//! entry:
//!
//! ```text
//! magic "CLJ\x01" | payload length u32 | ledger id u64 | seq u64 | crc32 u32 | payload
//! ```
//!
//! all little-endian. The CRC covers the first 24 header bytes and the payload. The payload is a
//! codec record: the batch's time, the default timeout it ran with, and its operations.
//!
//! # Which entries count
//!
//! redb's `meta` table records the last sequence number redb holds (`journal_seq`, written in
//! the same redb transaction as the batch) and the ledger's random id. Reading starts at
//! offset 0 and takes entries while each has this ledger's id, the next sequence number and a
//! valid CRC. So a torn or never-synced tail, entries older than the last checkpoint (after the
//! journal starts over at offset 0), and a journal left behind by another ledger of the same
//! name all end the replay instead of being applied.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::Op;
use crate::storage::codec::{self, MAX_JOURNAL_PAYLOAD_BYTES};

/// Entries start on this boundary: one page, the unit the disk writes atomically at best.
pub(crate) const BLOCK_BYTES: u64 = 4096;
/// The journal never grows past this; a batch that does not fit is committed as a checkpoint.
pub(crate) const JOURNAL_CAPACITY_BYTES: u64 = 8 * 1024 * 1024;
/// The file grows in zero-filled steps, so that an append overwrites allocated blocks and
/// `fdatasync` has no file-size metadata to write. The first step is this size, and each step
/// doubles the file, so a short session (a CLI call) writes little and a long one grows the
/// file about ten times up to its capacity.
const FIRST_GROW_BYTES: u64 = 16 * 1024;
const MAGIC: [u8; 4] = *b"CLJ\x01";
const HEADER_BYTES: usize = 28;

/// One replayable batch.
#[derive(Debug, Deserialize)]
pub(crate) struct Batch {
    /// The time the batch ran at.
    pub now_ms: u64,
    /// The ledger's default generation timeout when it ran.
    pub default_timeout_ms: u64,
    pub ops: Vec<Op>,
}

#[derive(Serialize)]
struct BatchRef<'a> {
    now_ms: u64,
    default_timeout_ms: u64,
    ops: &'a [Op],
}

/// Encode a batch as a journal payload.
pub(crate) fn encode_batch(now_ms: u64, default_timeout_ms: u64, ops: &[Op]) -> Vec<u8> {
    codec::encode(&BatchRef {
        now_ms,
        default_timeout_ms,
        ops,
    })
}

/// The journal of the ledger at `ledger`: `<file name>.journal` next to it.
pub(crate) fn path_for(ledger: &Path) -> PathBuf {
    let mut name = ledger.file_name().unwrap_or_default().to_os_string();
    name.push(".journal");
    ledger.with_file_name(name)
}

/// What the first bytes of a journal file say about whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// They do not start like an entry: not a journal.
    Foreign,
    /// An entry header cut before its ledger id: a torn first write, nothing to replay.
    Cut,
    /// An entry of the ledger with this id.
    Ledger(u64),
}

/// Whose journal a file starting with `block` is.
pub(crate) fn owner(block: &[u8]) -> Owner {
    let magic = block.len().min(MAGIC.len());
    if block[..magic] != MAGIC[..magic] {
        return Owner::Foreign;
    }
    match block.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        Some(id) => Owner::Ledger(u64::from_le_bytes(id)),
        None => Owner::Cut,
    }
}

fn entry_bytes(payload_len: usize) -> u64 {
    (HEADER_BYTES + payload_len).div_ceil(BLOCK_BYTES as usize) as u64 * BLOCK_BYTES
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Storage {
        message: format!("journal `{}`: {what}: {e}", path.display()),
    }
}

/// An open journal. Only the writer uses it, under the writer lock.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    /// `None` only for a read-only ledger without a journal file.
    file: Option<File>,
    ledger_id: u64,
    /// Where the next entry goes.
    write_offset: u64,
    /// Bytes at the start of the file known to be allocated (zero-filled or written).
    allocated_bytes: u64,
    /// The sequence number of the last entry written, or of the last one redb holds.
    last_seq: u64,
}

impl Journal {
    /// Read the journal `file` (opened and locked at `path` by
    /// [`JournalFile`](super::journal_file::JournalFile)) and the entries after `applied_seq`
    /// that belong to `ledger_id`. No file (a read-only open of a ledger without one) is an
    /// empty journal.
    pub fn open(
        path: PathBuf,
        file: Option<File>,
        ledger_id: u64,
        applied_seq: u64,
    ) -> Result<(Journal, Vec<Batch>), Error> {
        let mut journal = Journal {
            path,
            file: None,
            ledger_id,
            write_offset: 0,
            allocated_bytes: 0,
            last_seq: applied_seq,
        };
        let Some(file) = file else {
            return Ok((journal, Vec::new()));
        };
        let len = file
            .metadata()
            .map_err(|e| io_error(&journal.path, "cannot read its size", e))?
            .len();
        let mut batches = Vec::new();
        let mut offset = 0u64;
        let mut header = [0u8; HEADER_BYTES];
        while offset + HEADER_BYTES as u64 <= len {
            file.read_exact_at(&mut header, offset)
                .map_err(|e| io_error(&journal.path, "cannot read it", e))?;
            let u32_at =
                |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap_or_default());
            let u64_at =
                |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or_default());
            let payload_len = u32_at(4) as usize;
            let seq = u64_at(16);
            let next = journal.last_seq.checked_add(1);
            if header[..4] != MAGIC
                || payload_len > MAX_JOURNAL_PAYLOAD_BYTES
                || offset + entry_bytes(payload_len) > len
                || u64_at(8) != ledger_id
                || Some(seq) != next
            {
                break;
            }
            let mut payload = vec![0u8; payload_len];
            file.read_exact_at(&mut payload, offset + HEADER_BYTES as u64)
                .map_err(|e| io_error(&journal.path, "cannot read it", e))?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&header[..24]);
            crc.update(&payload);
            if crc.finalize() != u32_at(24) {
                break;
            }
            // The frame is intact, so the payload is what this ledger wrote: failing to decode
            // it is damage that must stop the open, not a tail to ignore.
            let batch: Batch = codec::decode_journal(seq, &payload).map_err(|e| match e {
                Error::Corruption { table, key, detail } => Error::Corruption {
                    table,
                    key,
                    detail: format!(
                        "{detail}; the journal `{}` holds writes the ledger file does not have \
                         yet: restore both from a backup, or move the journal aside to open the \
                         ledger without those writes",
                        journal.path.display()
                    ),
                },
                other => other,
            })?;
            batches.push(batch);
            journal.last_seq = seq;
            offset += entry_bytes(payload_len);
        }
        journal.allocated_bytes = len - len % BLOCK_BYTES;
        journal.file = Some(file);
        Ok((journal, batches))
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// The sequence number of the last entry written.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Nothing was written since the journal last started over.
    pub fn is_empty(&self) -> bool {
        self.write_offset == 0
    }

    /// Whether a payload of `payload_len` bytes fits in what is left.
    pub fn fits(&self, payload_len: usize) -> bool {
        payload_len <= MAX_JOURNAL_PAYLOAD_BYTES
            && self.write_offset + entry_bytes(payload_len) <= JOURNAL_CAPACITY_BYTES
    }

    /// Delete the file: for a clean close, after a checkpoint, when redb holds every entry.
    /// The next open starts a new journal.
    pub fn remove(self) -> Result<(), Error> {
        drop(self.file);
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&self.path, "cannot remove it", e)),
        }
    }

    /// Start over at offset 0: redb now holds every entry (a checkpoint committed).
    pub fn reset(&mut self) {
        self.write_offset = 0;
    }

    /// Append entry `seq` and sync it. When this returns `Ok`, the entry survives a crash.
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<(), Error> {
        assert_eq!(seq, self.next_seq(), "journal entries are consecutive");
        assert!(
            self.fits(payload.len()),
            "the caller checks that an entry fits"
        );
        let total = entry_bytes(payload.len());
        let end = self.write_offset + total;
        if end > self.allocated_bytes {
            self.grow(end)?;
        }
        let mut buf = Vec::with_capacity(total as usize);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&self.ledger_id.to_le_bytes());
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

    /// The open file: there is one once `grow` has run.
    fn file(&self) -> Result<&File, Error> {
        self.file.as_ref().ok_or_else(|| Error::Storage {
            message: format!("journal `{}` has no file", self.path.display()),
        })
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

    /// Open (creating) the file at `path` and read it as a journal.
    fn open_at(
        path: PathBuf,
        ledger_id: u64,
        applied_seq: u64,
    ) -> Result<(Journal, Vec<Batch>), Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        Journal::open(path, Some(file), ledger_id, applied_seq)
    }

    fn ops(n: usize) -> Vec<Op> {
        (0..n)
            .map(|i| Op::Complete {
                generation_id: format!("g{i}"),
            })
            .collect()
    }

    #[test]
    fn entries_read_back_in_order_and_stop_at_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.journal");
        let (mut j, none) = open_at(path.clone(), 7, 0).unwrap();
        assert!(none.is_empty());
        for seq in 1..=3 {
            let payload = encode_batch(seq * 10, 5, &ops(seq as usize));
            j.append(seq, &payload).unwrap();
        }
        let (_, batches) = open_at(path.clone(), 7, 0).unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2].now_ms, 30);
        assert_eq!(batches[2].ops, ops(3));
        // Entries redb already holds are skipped; another ledger's id reads nothing.
        let (j2, batches) = open_at(path.clone(), 7, 2).unwrap();
        assert_eq!(batches.len(), 0, "entry 1 is at offset 0, and is not seq 3");
        assert_eq!(j2.next_seq(), 3);
        assert!(open_at(path.clone(), 8, 0).unwrap().1.is_empty());
        // After a reset, new entries overwrite from offset 0 and old ones end the chain.
        j.reset();
        j.append(4, &encode_batch(40, 5, &ops(1))).unwrap();
        let (_, batches) = open_at(path, 7, 3).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].now_ms, 40);
    }

    #[test]
    fn a_damaged_tail_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.journal");
        let (mut j, _) = open_at(path.clone(), 1, 0).unwrap();
        j.append(1, &encode_batch(1, 5, &ops(2))).unwrap();
        j.append(2, &encode_batch(2, 5, &ops(2))).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for at in [4096 + 2, 4096 + 10, 4096 + 26, 4096 + 30, 4096 + 40] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            assert_eq!(
                open_at(path.clone(), 1, 0).unwrap().1.len(),
                1,
                "flip at {at}"
            );
        }
        for len in [4096, 4096 + 27, 4096 + 40] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            assert_eq!(
                open_at(path.clone(), 1, 0).unwrap().1.len(),
                1,
                "cut at {len}"
            );
        }
    }

    #[test]
    fn capacity_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open_at(dir.path().join("j"), 1, 0).unwrap();
        assert!(j.fits(100));
        assert!(!j.fits(MAX_JOURNAL_PAYLOAD_BYTES + 1));
        assert_eq!(entry_bytes(1), BLOCK_BYTES);
        assert_eq!(entry_bytes(4096 - HEADER_BYTES + 1), 2 * BLOCK_BYTES);
    }
}
