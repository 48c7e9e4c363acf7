//! Arbitrary bytes into every record decoder: each must return Ok or Err, never panic.
//!
//! The raw input mostly fails the checksum, so each input is also framed the way the ledger
//! frames records (`[version][payload][crc32 LE]`) with a correct checksum: that sends the
//! bytes on into the bincode decoding of every record type.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    credit_ledger::fuzzing::decode_all(data);
    // The first byte picks the version byte (mostly the current one, 1).
    let (version, payload) = match data.split_first() {
        Some((&v, rest)) if v < 0xf0 => (1u8, rest),
        Some((&v, rest)) => (v & 0x0f, rest),
        None => (1u8, data),
    };
    let mut framed = Vec::with_capacity(payload.len() + 5);
    framed.push(version);
    framed.extend_from_slice(payload);
    let crc = crc32fast::hash(&framed);
    framed.extend_from_slice(&crc.to_le_bytes());
    credit_ledger::fuzzing::decode_all(&framed);
});
