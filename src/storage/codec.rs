//! Record framing: `[format version u8][bincode payload][crc32 of both, little-endian]`.
//!
//! This is the only module that knows bincode. Swapping the encoding means changing this file
//! and bumping [`FORMAT_VERSION`]; a reader sees the version byte before it trusts the payload.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;

/// The version byte written in front of every record.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes of framing around the payload: the version byte and the CRC.
const FRAME_BYTES: usize = 1 + 4;

/// The largest record the decoder will even try to read. Real records are a few hundred bytes;
/// the bound stops a corrupt length prefix from asking for gigabytes.
const MAX_RECORD_BYTES: usize = 64 * 1024;

/// The largest journal payload: the operations of one group commit. A batch that encodes to
/// more is committed straight to redb instead of through the journal.
pub(crate) const MAX_JOURNAL_PAYLOAD_BYTES: usize = 1024 * 1024;

fn config<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Frame `value` as a record.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_VERSION);
    // The records are plain structs of integers, strings, options and enums, which bincode's
    // serde encoder always accepts; a failure here is a bug in this crate.
    bincode::serde::encode_into_std_write(value, &mut out, config::<MAX_RECORD_BYTES>())
        .expect("invariant: ledger records always encode");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The checksum stored at the end of a framed record, or 0 when it is too short to have one.
pub(crate) fn record_crc(bytes: &[u8]) -> u32 {
    match bytes.len().checked_sub(4) {
        Some(start) if bytes.len() >= FRAME_BYTES => {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[start..]);
            u32::from_le_bytes(b)
        }
        _ => 0,
    }
}

/// The workspace of a framed [`TxnRecord`](crate::model::records::TxnRecord), read from the
/// front of its payload (the record starts with its id, its time and its workspace) without
/// decoding the rest or checking the checksum. For the audit's later passes, which skip the
/// records of the workspaces they do not check: a record they use is then decoded, and
/// checked, in full. `None` when the front does not decode.
pub(crate) fn txn_workspace(bytes: &[u8]) -> Option<&str> {
    let payload = bytes.get(1..bytes.len().checked_sub(4)?)?;
    if bytes.first() != Some(&FORMAT_VERSION) {
        return None;
    }
    let ((_id, _at_ms, workspace), _): ((u64, u64, &str), usize) =
        bincode::serde::borrow_decode_from_slice(payload, config::<MAX_RECORD_BYTES>()).ok()?;
    Some(workspace)
}

/// Check the frame and decode a record. Any damage becomes [`Error::Corruption`] naming
/// `table` and `key`; a record from a newer format becomes [`Error::UnsupportedFormat`].
pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, Error> {
    decode_limited::<T, MAX_RECORD_BYTES>(table, key, bytes)
}

/// [`decode`] for a record type whose layout grew: a record of the older layout `Old` (whose
/// fields are a prefix of `T`'s, so `T` fails on it with an early end) decodes as that and
/// converts. A damaged record fails both and gets the error of the current layout.
pub(crate) fn decode_or_older<T: DeserializeOwned, Old: DeserializeOwned + Into<T>>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, Error> {
    decode::<T>(table, key, bytes).or_else(|e| {
        decode::<Old>(table, key, bytes)
            .map(Into::into)
            .map_err(|_| e)
    })
}

/// [`decode`] for a journal payload, which may be up to [`MAX_JOURNAL_PAYLOAD_BYTES`].
pub(crate) fn decode_journal<T: DeserializeOwned>(seq: u64, bytes: &[u8]) -> Result<T, Error> {
    decode_limited::<T, MAX_JOURNAL_PAYLOAD_BYTES>("journal", &seq, bytes)
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, Error> {
    let corrupt = |detail: String| Error::Corruption {
        table,
        key: key.to_string(),
        detail,
    };
    if bytes.len() < FRAME_BYTES {
        return Err(corrupt(format!(
            "record is {} bytes, shorter than its {FRAME_BYTES}-byte frame",
            bytes.len()
        )));
    }
    if bytes.len() > LIMIT {
        return Err(corrupt(format!(
            "record is {} bytes, over the limit",
            bytes.len()
        )));
    }
    let body = &bytes[..bytes.len() - 4];
    let stored = record_crc(bytes);
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        )));
    }
    let version = body[0];
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(&body[1..], config::<LIMIT>())
        .map_err(|e| corrupt(format!("undecodable payload: {e}")))?;
    if used != body.len() - 1 {
        return Err(corrupt(format!(
            "{} trailing bytes after the payload",
            body.len() - 1 - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::{GenState, GenerationRecord};

    fn sample() -> GenerationRecord {
        GenerationRecord {
            id: "gen-1".into(),
            workspace: "ws".into(),
            feature: "Quick Video".into(),
            cost_credits: 12,
            timeout_ms: 9_000_000,
            started_at_ms: 1,
            deadline_ms: 9_000_001,
            usage_txn: 2,
            state: GenState::Running,
            single_allocation: None,
        }
    }

    /// The audit's skip passes read a transaction's workspace from the front of its record:
    /// that holds only while `TxnRecord` starts with its id, time and workspace.
    #[test]
    fn a_transaction_record_names_its_workspace_up_front() {
        let rec = crate::model::records::TxnRecord {
            id: 300_000,
            at_ms: 1_767_225_600_000,
            workspace: "ws-0042".into(),
            kind: crate::model::TxnKind::Usage,
            amount_credits: 12,
            debit: true,
            balance_before_credits: 100,
            balance_after_credits: 88,
            title: "Quick Video".into(),
            generation_id: Some("gen-1".into()),
            refund: None,
            idempotency_key: None,
            memo: None,
            prev_crc: 7,
            refund_lots: None,
        };
        let bytes = encode(&rec);
        assert_eq!(txn_workspace(&bytes), Some("ws-0042"));
        assert_eq!(txn_workspace(&bytes[..3]), None);
        assert_eq!(txn_workspace(&[]), None);
        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        assert_eq!(txn_workspace(&newer), None);
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample());
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: GenerationRecord = decode("generations", &"gen-1", &bytes).unwrap();
        assert_eq!(back, sample());
        assert_eq!(
            record_crc(&bytes),
            crc32fast::hash(&bytes[..bytes.len() - 4])
        );
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            let r: Result<GenerationRecord, _> = decode("generations", &"gen-1", &damaged);
            assert!(r.is_err(), "bit {i} flipped went unnoticed");
        }
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            let r: Result<GenerationRecord, _> = decode("generations", &"k", &bytes[..len]);
            assert!(matches!(
                r,
                Err(Error::Corruption {
                    table: "generations",
                    ..
                })
            ));
        }
        let r: Result<GenerationRecord, _> = decode("generations", &"k", &[0xff; 40]);
        assert!(r.is_err());
    }

    #[test]
    fn newer_version_is_reported_as_such() {
        let mut bytes = encode(&sample());
        bytes[0] = FORMAT_VERSION + 1;
        let n = bytes.len();
        let crc = crc32fast::hash(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let r: Result<GenerationRecord, _> = decode("generations", &"k", &bytes);
        assert!(matches!(
            r,
            Err(Error::UnsupportedFormat {
                found: 2,
                supported: 1
            })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&sample());
        let n = bytes.len();
        bytes.truncate(n - 4);
        bytes.push(0);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let r: Result<GenerationRecord, _> = decode("generations", &"k", &bytes);
        assert!(matches!(r, Err(Error::Corruption { .. })));
    }
}
