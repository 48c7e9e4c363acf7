//! Operation sequences against the reference model on a file ledger with its write-ahead
//! journal, where every crash replays the journal: the same harness as `tests/model.rs`.
//! Run with `cargo +nightly fuzz run ops_model_journal` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/model.rs"]
mod model;

fuzz_target!(|data: &[u8]| {
    model::run_journal(data);
});
