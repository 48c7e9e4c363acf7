//! The `credit-ledger` binary, driven as a user would: real processes, real files in temporary
//! directories, output parsed with serde_json, and every exit code reached.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const T0: &str = "2026-03-01T09:00:00Z";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// A refusal or error: exactly one line on stderr, never a panic or a backtrace.
    fn failed(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "{}", self.stderr);
        if code != 2 {
            assert_eq!(self.stderr.lines().count(), 1, "one line: {}", self.stderr);
            assert!(
                self.stderr.starts_with("credit-ledger: "),
                "{}",
                self.stderr
            );
        }
        self
    }
}

struct Ws {
    _dir: tempfile::TempDir,
    db: PathBuf,
}

impl Ws {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("ledger.redb");
        Ws { _dir: dir, db }
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Run the tool on this ledger file.
    fn run(&self, args: &[&str]) -> Run {
        let mut full = vec!["--db", self.db.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        run_in(self.dir(), &full)
    }
}

fn run_in(dir: &Path, args: &[&str]) -> Run {
    run_env(dir, &[], args)
}

/// Run the tool in `dir` with these environment variables set (and no other
/// `CREDIT_LEDGER_DB`).
fn run_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_credit-ledger"))
        .args(args)
        .current_dir(dir)
        .env_remove("CREDIT_LEDGER_DB")
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run credit-ledger");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The seed example: credit 100, start a 12-credit Quick Video, fail it with model-failure.
fn seed(ws: &Ws) {
    let r = ws
        .run(&[
            "--now",
            T0,
            "--json",
            "credit",
            "acme",
            "100",
            "--key",
            "order-1001",
        ])
        .ok()
        .json();
    assert_eq!(
        (r["balance_after"].as_u64(), r["replay"].as_bool()),
        (Some(100), Some(false))
    );
    let c = ws
        .run(&[
            "--now",
            "2026-03-01T09:01:00Z",
            "--json",
            "start",
            "gen-1",
            "--workspace",
            "acme",
            "--feature",
            "Quick Video",
            "--cost",
            "12",
        ])
        .ok()
        .json();
    assert_eq!(c["balance_after"], 88);
    assert_eq!(
        c["deadline"], "2026-03-01T11:31:00Z",
        "150 minutes by default"
    );
    let f = ws
        .run(&[
            "--now",
            "2026-03-01T09:03:00Z",
            "--json",
            "fail",
            "gen-1",
            "--reason",
            "model-failure",
            "--message",
            "model crashed",
        ])
        .ok()
        .json();
    assert_eq!(
        (
            f["amount"].as_u64(),
            f["reason"].as_str(),
            f["balance_after"].as_u64()
        ),
        (Some(12), Some("model-failure"), Some(100))
    );
}

#[test]
fn seed_example_refund_in_history_and_credit_summary() {
    let ws = Ws::new();
    seed(&ws);

    let page = ws
        .run(&["history", "acme", "--type", "refund", "--json"])
        .ok()
        .json();
    let entries = page["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{page}");
    let row = &entries[0];
    for key in [
        "id",
        "at",
        "title",
        "type",
        "amount",
        "status",
        "balance_before",
        "balance_after",
        "generation",
        "reason",
        "message",
        "refund_of",
    ] {
        assert!(row.get(key).is_some(), "history row lacks {key}: {row}");
    }
    assert_eq!(row["title"], "Quick Video");
    assert_eq!(row["type"], "refund");
    assert_eq!(row["status"], "completed");
    assert_eq!(row["amount"], 12);
    assert_eq!(
        (
            row["balance_before"].as_u64(),
            row["balance_after"].as_u64()
        ),
        (Some(88), Some(100))
    );
    assert_eq!(row["generation"], "gen-1");
    assert_eq!(row["reason"], "model-failure");
    assert_eq!(row["message"], "model crashed");
    assert_eq!(row["at"], "2026-03-01T09:03:00Z");
    assert!(page["next_cursor"].is_null());
    let refund_id = row["id"].as_u64().expect("id");
    let usage_id = row["refund_of"].as_u64().expect("refund_of");

    // The Usage shows Failed, and the whole history has the three rows, newest first.
    let all = ws.run(&["history", "acme", "--json"]).ok().json();
    let kinds: Vec<(&str, &str, i64)> = all["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
                e["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("refund", "completed", 12),
            ("usage", "failed", -12),
            ("purchase", "completed", 100)
        ]
    );

    // The credit summary, as text.
    let show = ws.run(&["show", &refund_id.to_string()]).ok().stdout;
    for needle in [
        "Balance Before  88",
        "Refunded 12 credits",
        "model-failure",
        "Message         model crashed",
        "New Balance     100",
        "Refund of",
        &format!("Usage #{usage_id}"),
    ] {
        assert!(show.contains(needle), "`{needle}` missing from:\n{show}");
    }
    // ... and as JSON, with the link both ways.
    let shown = ws
        .run(&["--json", "show", &format!("#{usage_id}")])
        .ok()
        .json();
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["refunded_by"].as_u64(), Some(refund_id));
    assert_eq!(shown["linked"]["id"].as_u64(), Some(refund_id));
    assert_eq!(shown["linked"]["relation"], "refunded_by");

    let table = ws.run(&["history", "acme"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATUS"),
        "{table}"
    );
    assert!(
        lines[1].contains("Quick Video")
            && lines[1].contains("+12")
            && lines[1].contains("Completed")
    );
    assert!(
        lines[2].contains("-12") && lines[2].contains("Failed"),
        "{table}"
    );
    assert!(
        lines[1].contains("2026-03-01 09:03:00"),
        "readable dates: {table}"
    );

    let bal = ws.run(&["balance", "acme", "--json"]).ok().json();
    assert_eq!(bal["workspace"], "acme");
    for (k, v) in [
        ("balance", 100),
        ("granted", 100),
        ("spent", 12),
        ("refunded", 12),
        ("running", 0),
    ] {
        assert_eq!(bal[k].as_u64(), Some(v), "{k}: {bal}");
    }

    let g = ws.run(&["generation", "gen-1", "--json"]).ok().json();
    assert_eq!(
        (g["state"].as_str(), g["reason"].as_str()),
        (Some("refunded"), Some("model-failure"))
    );
    assert_eq!(g["refund_txn"].as_u64(), Some(refund_id));

    let stats = ws.run(&["stats", "--json"]).ok().json();
    assert_eq!(stats["started"], 1);
    assert_eq!(stats["by_reason"]["model-failure"]["refunds"], 1);
    assert_eq!(stats["by_feature"]["Quick Video"]["refunds"], 1);

    let v = ws.run(&["verify", "--json"]).ok().json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["violations"].as_array().map(Vec::len), Some(0));

    // Repeating the failure report replays the same refund and changes nothing.
    let again = ws
        .run(&[
            "--now",
            "2026-03-01T09:05:00Z",
            "--json",
            "fail",
            "gen-1",
            "--reason",
            "model-failure",
        ])
        .ok()
        .json();
    assert_eq!(
        (again["replay"].as_bool(), again["refund_txn"].as_u64()),
        (Some(true), Some(refund_id))
    );
    println!("cli: seed example checked (refund #{refund_id} of usage #{usage_id})");
}

#[test]
fn timeout_refund_by_sweep_and_by_a_late_report() {
    let ws = Ws::new();
    ws.run(&[
        "--now", T0, "credit", "acme", "100", "--key", "k1", "--kind", "grant",
    ])
    .ok();
    ws.run(&[
        "--now",
        T0,
        "start",
        "slow",
        "--workspace",
        "acme",
        "--feature",
        "Quick Video",
        "--cost",
        "12",
    ])
    .ok();
    ws.run(&[
        "--now",
        T0,
        "start",
        "late",
        "--workspace",
        "acme",
        "--feature",
        "HD Image",
        "--cost",
        "4",
        "--timeout",
        "1h30m",
    ])
    .ok();

    // A report that arrives after the 90-minute deadline is refunded as a timeout, at once.
    let late = ws
        .run(&["--now", "2026-03-01T10:31:00Z", "complete", "late"])
        .failed(1);
    assert!(late.stderr.contains("refunded"), "{}", late.stderr);

    // Before the deadline the sweep finds nothing and the generation is running.
    let early = ws
        .run(&["--now", "2026-03-01T11:29:00Z", "--json", "sweep"])
        .ok()
        .json();
    assert_eq!(early["refunded"], 0, "{early}");
    let bal = ws.run(&["--json", "balance", "acme"]).ok().json();
    assert_eq!(
        (bal["balance"].as_u64(), bal["running"].as_u64()),
        (Some(88), Some(1))
    );

    // Past 150 minutes the sweep refunds the other one.
    let swept = ws
        .run(&["--now", "2026-03-01T11:31:00Z", "--json", "sweep"])
        .ok()
        .json();
    assert_eq!(swept["refunded"], 1, "{swept}");
    let r = &swept["refunds"][0];
    assert_eq!(
        (
            r["generation"].as_str(),
            r["reason"].as_str(),
            r["amount"].as_u64()
        ),
        (Some("slow"), Some("timeout"), Some(12))
    );
    assert_eq!(swept["more_expired"], false);

    let page = ws
        .run(&["history", "acme", "--type", "refund", "--json"])
        .ok()
        .json();
    let refunds = page["entries"].as_array().expect("entries");
    assert_eq!(refunds.len(), 2);
    assert!(refunds
        .iter()
        .all(|e| e["reason"] == "timeout" && e["status"] == "completed"));
    let g = ws.run(&["generation", "slow", "--json"]).ok().json();
    assert_eq!(
        (g["state"].as_str(), g["reason"].as_str()),
        (Some("refunded"), Some("timeout"))
    );
    let bal = ws.run(&["--json", "balance", "acme"]).ok().json();
    assert_eq!(
        (
            bal["balance"].as_u64(),
            bal["running"].as_u64(),
            bal["refunded"].as_u64()
        ),
        (Some(100), Some(0), Some(16))
    );
    // Completing it now is refused: it was refunded.
    ws.run(&["--now", "2026-03-01T11:32:00Z", "complete", "slow"])
        .failed(1);
    ws.run(&["verify"]).ok();
    println!("cli: timeout refunds by sweep and by lazy expiry checked");
}

#[test]
fn every_exit_code() {
    let ws = Ws::new();
    seed(&ws);
    let now = ["--now", "2026-03-01T09:10:00Z"];
    let with_now = |args: &[&str]| {
        let mut v = now.to_vec();
        v.extend_from_slice(args);
        ws.run(&v)
    };

    // 1: refused operations, each with one line that says what to do.
    let r = with_now(&[
        "start",
        "g2",
        "--workspace",
        "acme",
        "--feature",
        "HD Video",
        "--cost",
        "500",
    ])
    .failed(1);
    assert!(r.stderr.contains("add credits first"), "{}", r.stderr);
    let r = with_now(&[
        "start",
        "gen-1",
        "--workspace",
        "acme",
        "--feature",
        "Quick Video",
        "--cost",
        "13",
    ])
    .failed(1);
    assert!(r.stderr.contains("use a new id"), "{}", r.stderr);
    let r = with_now(&["complete", "gen-1"]).failed(1);
    assert!(r.stderr.contains("cannot complete"), "{}", r.stderr);
    with_now(&["complete", "nope"]).failed(1);
    with_now(&["show", "999"]).failed(1);
    with_now(&["balance", "nobody"]).failed(1);
    with_now(&[
        "adjust", "acme", "-1000", "--key", "a1", "--memo", "too much",
    ])
    .failed(1);
    let j = with_now(&["--json", "show", "999"]).failed(1).json();
    assert_eq!(j["error"]["exit_code"], 1);
    // A balance that goes down on purpose is fine.
    let adj = with_now(&[
        "--json",
        "adjust",
        "acme",
        "-10",
        "--key",
        "a2",
        "--memo",
        "goodwill reversal",
    ])
    .ok()
    .json();
    assert_eq!(adj["balance_after"], 90);

    // 2: usage errors, from clap and from the values themselves.
    ws.run(&["frobnicate"]).failed(2);
    ws.run(&["credit", "acme"]).failed(2);
    ws.run(&["credit", "acme", "-5", "--key", "k"]).failed(2);
    ws.run(&["fail", "gen-1", "--reason", "timeout"]).failed(2);
    ws.run(&["--now", "yesterday", "balance", "acme"]).failed(2);
    ws.run(&["history", "acme", "--type", "gift"]).failed(2);
    ws.run(&[
        "start",
        "g",
        "--workspace",
        "acme",
        "--feature",
        "F",
        "--cost",
        "1",
        "--timeout",
        "5x",
    ])
    .failed(2);
    with_now(&["credit", "acme", "0", "--key", "zero"]).failed(2);
    with_now(&[
        "start",
        "g",
        "--workspace",
        "acme",
        "--feature",
        "F",
        "--cost",
        "1",
        "--timeout",
        "30d",
    ])
    .failed(2);
    with_now(&["history", "acme", "--cursor", "garbage"]).failed(2);
    with_now(&["history", "acme", "--limit", "0"]).failed(2);
    with_now(&["credit", "bad\u{7}id", "5", "--key", "k"]).failed(2);
    ws.run(&[
        "--now",
        "2020-01-01T00:00:00Z",
        "credit",
        "acme",
        "5",
        "--key",
        "old",
    ])
    .failed(2);
    let j = ws
        .run(&["--json", "--now", "nonsense", "verify"])
        .failed(2)
        .json();
    assert_eq!(j["error"]["exit_code"], 2);
    ws.run(&["export", "acme", "--format", "jsonl", "--json"])
        .failed(2);
    run_in(ws.dir(), &["--db", "missing.redb", "balance", "acme"]).failed(2);
    run_in(ws.dir(), &["--db", ".", "verify"]).failed(2);
    ws.run(&["simulate", "--fail-rate", "0.9", "--timeout-rate", "0.2"])
        .failed(2);
    ws.run(&["simulate", "--threads", "0"]).failed(2);

    // 3: a file that is not a ledger, or is empty.
    let garbage = ws.dir().join("garbage.redb");
    std::fs::write(&garbage, vec![0xA5u8; 8192]).expect("write");
    run_in(ws.dir(), &["--db", "garbage.redb", "verify"]).failed(3);
    let j = run_in(
        ws.dir(),
        &["--db", "garbage.redb", "--json", "balance", "x"],
    )
    .failed(3)
    .json();
    assert_eq!(j["error"]["exit_code"], 3);
    std::fs::write(ws.dir().join("empty.redb"), b"").expect("write");
    run_in(ws.dir(), &["--db", "empty.redb", "history", "acme"]).failed(3);

    // 0, and nothing above changed the ledger.
    let bal = ws.run(&["--json", "balance", "acme"]).ok().json();
    assert_eq!(bal["balance"], 90);
    ws.run(&["verify"]).ok();
    ws.run(&["--help"]).ok();
    println!("cli: exit codes 0, 1, 2 and 3 reached");
}

#[test]
fn a_damaged_ledger_fails_verification_with_exit_3() {
    let ws = Ws::new();
    let memo = "MEMO-MARKER-0123456789";
    ws.run(&[
        "--now", T0, "credit", "acme", "100", "--key", "k1", "--memo", memo,
    ])
    .ok();
    ws.run(&["--now", T0, "credit", "acme", "5", "--key", "k2"])
        .ok();
    // Flip one byte of the stored memo, wherever it is stored.
    let mut bytes = std::fs::read(&ws.db).expect("read");
    let needle = memo.as_bytes();
    let mut hits = 0;
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i + needle.len() - 1] ^= 0x01;
            hits += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    assert!(hits > 0, "the memo is stored in the file");
    std::fs::write(&ws.db, &bytes).expect("write");
    let r = ws.run(&["--json", "verify"]);
    assert_eq!(r.code, 3, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let j = r.json();
    if j.get("error").is_some() {
        // Refused at open or on the damaged record: a typed corruption error.
        assert_eq!(j["error"]["exit_code"], 3, "{j}");
    } else {
        assert_eq!(j["ok"], false, "{j}");
        assert!(j["violation_count"].as_u64().unwrap_or(0) > 0, "{j}");
    }
    println!("cli: damaged ledger: exit 3 ({hits} copies of the memo altered): {j}");
}

/// Damaged ledgers on which redb panics, kept in `tests/data/cli-damaged/` so a failure
/// reproduces: each is a copy of the file `simulate --workspaces 3 --generations 300 --threads
/// 1` wrote, with 8 bits flipped (Python's `random.Random(seed)`: seeds 22, 24, 35 and 12).
/// With each, the commands listed made redb panic, and the ledger turned the panic into a typed
/// error. The operator must see that error alone, with exit 3, never a "panicked" line from the
/// panic hook that asks them to report a bug.
#[test]
fn caught_storage_panics_print_only_the_typed_error() {
    let csv = ["export", "ws-0001", "--format", "csv"];
    let cases: [(&str, Vec<Vec<&str>>); 4] = [
        (
            // redb panics while opening: every command is refused.
            "open-panic.redb",
            vec![
                vec!["verify"],
                vec!["balance", "ws-0000"],
                vec!["history", "ws-0000"],
                csv.to_vec(),
                vec!["stats"],
                vec!["show", "5"],
                vec!["generation", "sim-000001"],
                vec!["credit", "ws-0000", "5", "--key", "late-order"],
                vec!["sweep"],
            ],
        ),
        (
            "history-panic.redb",
            vec![
                vec!["verify"],
                vec!["history", "ws-0000"],
                vec!["history", "ws-0001"],
                csv.to_vec(),
                vec!["export", "ws-0000", "--format", "jsonl"],
            ],
        ),
        (
            "write-panic.redb",
            vec![
                vec!["verify"],
                vec!["balance", "ws-0001"],
                vec!["history", "ws-0000"],
                vec!["credit", "ws-0000", "5", "--key", "late-order"],
            ],
        ),
        (
            "export-panic.redb",
            vec![
                vec!["verify"],
                vec!["export", "ws-0000", "--format", "jsonl"],
                vec!["credit", "ws-0000", "5", "--key", "late-order"],
            ],
        ),
    ];
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cli-damaged");
    for (name, commands) in &cases {
        for args in commands {
            // A fresh copy each time: a write may change the file.
            let ws = Ws::new();
            std::fs::copy(shipped.join(name), &ws.db).expect("copy the damaged file");
            let r = ws.run(args);
            assert_eq!(
                r.code, 3,
                "{name} {args:?}: stdout:\n{}\nstderr:\n{}",
                r.stdout, r.stderr
            );
            assert!(
                !r.stderr.contains("panicked") && !r.stderr.contains("this is a bug"),
                "{name} {args:?}: {}",
                r.stderr
            );
            assert_eq!(r.stderr.lines().count(), 1, "{name} {args:?}: {}", r.stderr);
            assert!(r.stderr.starts_with("credit-ledger: "), "{}", r.stderr);
        }
    }
    // On this file redb panics while closing a handle that may write, after the command has
    // done its work. The ledger catches that and logs a warning; the operator gets the
    // warning, not a bug report. A read opens the file read-only, and closes it quietly.
    let close = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile/close-panic.redb");
    for args in [vec!["verify"], vec!["balance", "workspace-0"]] {
        let ws = Ws::new();
        std::fs::copy(&close, &ws.db).expect("copy the damaged file");
        let r = ws.run(&args);
        assert_eq!(r.code, 0, "close-panic.redb {args:?}: {}", r.stderr);
        assert_eq!(r.stderr, "", "close-panic.redb {args:?}");
    }
    {
        let args = ["credit", "workspace-0", "5", "--key", "late-order"];
        let ws = Ws::new();
        std::fs::copy(&close, &ws.db).expect("copy the damaged file");
        let r = ws.run(&args);
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("this is a bug"),
            "close-panic.redb {args:?}: {}",
            r.stderr
        );
        assert_eq!(
            r.stderr.trim_end(),
            format!(
                "credit-ledger: warning: the storage engine failed while closing the file; run `verify` on it (ledger: {})",
                ws.db.display()
            ),
            "close-panic.redb {args:?}"
        );
    }
}

#[test]
fn export_paging_and_replays() {
    let ws = Ws::new();
    ws.run(&[
        "--now",
        T0,
        "credit",
        "acme",
        "1000",
        "--key",
        "k1",
        "--memo",
        "bulk, \"quoted\"",
    ])
    .ok();
    for i in 0..7 {
        let id = format!("g{i}");
        ws.run(&[
            "--now",
            "2026-03-01T09:01:00Z",
            "start",
            &id,
            "--workspace",
            "acme",
            "--feature",
            "Quick Image",
            "--cost",
            "2",
        ])
        .ok();
    }
    ws.run(&["--now", "2026-03-01T09:02:00Z", "complete", "g0"])
        .ok();
    ws.run(&[
        "--now",
        "2026-03-01T09:02:00Z",
        "fail",
        "g1",
        "--reason",
        "api-failure",
        "--message",
        "502, again",
    ])
    .ok();
    // Replayed credit: same receipt, nothing new.
    let again = ws
        .run(&[
            "--now",
            "2026-03-01T09:03:00Z",
            "--json",
            "credit",
            "acme",
            "1000",
            "--key",
            "k1",
            "--memo",
            "bulk, \"quoted\"",
        ])
        .ok()
        .json();
    assert_eq!(
        (again["replay"].as_bool(), again["txn_id"].as_u64()),
        (Some(true), Some(1))
    );

    // Paging with the printed cursor visits every row once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = vec!["--json", "history", "acme", "--limit", "3"];
        if let Some(c) = &cursor {
            args.extend_from_slice(&["--cursor", c]);
        }
        let page = ws.run(&args).ok().json();
        seen.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_u64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, (1..=9).rev().collect::<Vec<u64>>());
    let text = ws.run(&["history", "acme", "--limit", "3"]).ok().stdout;
    assert!(text.contains("Next page: --cursor "), "{text}");
    let pending = ws
        .run(&[
            "--json", "history", "acme", "--status", "pending", "--type", "usage",
        ])
        .ok()
        .json();
    assert_eq!(pending["entries"].as_array().map(Vec::len), Some(5));

    let jsonl = ws.run(&["export", "acme", "--format", "jsonl"]).ok().stdout;
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 9, "a credit, seven starts, one refund");
    assert_eq!(rows[0]["memo"], "bulk, \"quoted\"");
    assert!(
        rows.windows(2)
            .all(|w| w[0]["id"].as_u64() < w[1]["id"].as_u64()),
        "oldest first"
    );
    let last = rows.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["message"].as_str()),
        (Some("refund"), Some("502, again"))
    );

    let csv = ws.run(&["export", "acme", "--format", "csv"]).ok().stdout;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 10);
    assert!(lines[0].starts_with("id,at,workspace,title,type,amount,status"));
    assert!(
        lines[1].contains("\"bulk, \"\"quoted\"\"\""),
        "{}",
        lines[1]
    );
    assert!(
        lines[9].contains("api-failure,\"502, again\""),
        "{}",
        lines[9]
    );
    println!(
        "cli: {} history rows paged, exported as CSV and JSON lines",
        seen.len()
    );
}

#[test]
fn simulate_20000_generations_is_clean() {
    let ws = Ws::new();
    let db = ws.dir().join("sim.redb");
    let r = run_in(
        ws.dir(),
        &[
            "--db",
            db.to_str().unwrap(),
            "--json",
            "simulate",
            "--generations",
            "20000",
            "--workspaces",
            "50",
            "--threads",
            "4",
            "--batch",
            "256",
        ],
    )
    .ok();
    let j = r.json();
    assert_eq!(j["verify"]["ok"], true, "{j}");
    assert_eq!(j["verify"]["violations"].as_array().map(Vec::len), Some(0));
    assert_eq!(j["ok"], true);
    assert_eq!(j["conserved"], true);
    assert_eq!(j["db"].as_str(), db.to_str());
    let phases = j["phases"].as_array().expect("phases");
    let start = phases
        .iter()
        .find(|p| p["name"] == "start")
        .expect("start phase");
    assert_eq!(start["ops"], 20_000);
    assert!(phases
        .iter()
        .all(|p| p["seconds"].is_number() && p["ops_per_s"].is_number()));
    let reasons = j["refunds_by_reason"]
        .as_object()
        .expect("refunds_by_reason");
    for reason in [
        "model-failure",
        "api-failure",
        "service-unavailable",
        "system-error",
        "invalid-input",
        "timeout",
    ] {
        assert!(reasons[reason].as_u64().unwrap_or(0) > 0, "{reason}: {j}");
    }
    assert!(j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["ok"] == true));
    assert!(j["peak_rss_bytes"].as_u64().unwrap_or(1) > 0);

    // The file it leaves is a ledger the other commands read.
    let v = run_in(
        ws.dir(),
        &["--db", db.to_str().unwrap(), "--json", "verify"],
    )
    .ok()
    .json();
    assert_eq!(v["ok"], true);
    let stats = run_in(ws.dir(), &["--db", db.to_str().unwrap(), "--json", "stats"])
        .ok()
        .json();
    assert_eq!(stats["started"], 20_000);

    // It never overwrites an existing ledger.
    let again = run_in(
        ws.dir(),
        &[
            "--db",
            db.to_str().unwrap(),
            "simulate",
            "--generations",
            "10",
        ],
    )
    .failed(1);
    assert!(again.stderr.contains("not empty"), "{}", again.stderr);
    println!(
        "cli: simulate 20000 generations: {} refunds by reason {:?}",
        reasons.values().filter_map(Value::as_u64).sum::<u64>(),
        reasons
    );
}

/// `CREDIT_LEDGER_DB=` (set, but empty) is no path at all: the default file, not a complaint
/// about an empty `--db` the user never typed.
#[test]
fn an_empty_db_variable_means_the_default_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = [("CREDIT_LEDGER_DB", "")];
    let missing = run_env(dir.path(), &empty, &["balance", "acme"]).failed(2);
    assert!(
        missing
            .stderr
            .contains("no ledger file at `credit-ledger.redb`")
            && !missing.stderr.contains("--db <PATH>"),
        "{}",
        missing.stderr
    );
    run_env(
        dir.path(),
        &empty,
        &["--now", T0, "credit", "acme", "5", "--key", "k1"],
    )
    .ok();
    assert!(dir.path().join("credit-ledger.redb").exists());
    let b = run_env(dir.path(), &empty, &["--json", "balance", "acme"])
        .ok()
        .json();
    assert_eq!(b["balance"], 5);
    // A set variable still names the file, and --db still wins over it.
    let other = dir.path().join("other.redb");
    let named = [("CREDIT_LEDGER_DB", other.to_str().expect("utf-8 path"))];
    run_env(
        dir.path(),
        &named,
        &["--now", T0, "credit", "beta", "7", "--key", "k1"],
    )
    .ok();
    assert!(other.exists());
    run_env(
        dir.path(),
        &named,
        &["--db", "credit-ledger.redb", "balance", "beta"],
    )
    .failed(1);
}

/// Scripts run commands in parallel on one file. Each process waits (`--wait`) while another
/// has the file open, instead of failing with "open in another process"; they contend for the
/// file for real, and every credit lands exactly once.
#[test]
fn parallel_commands_wait_for_the_file_instead_of_failing() {
    const PROCESSES: usize = 32;
    let ws = Ws::new();
    ws.run(&["--now", T0, "credit", "acme", "1", "--key", "first"])
        .ok();
    let db = ws.db.to_str().expect("utf-8 path");
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            let key = format!("order-{i}");
            Command::new(env!("CARGO_BIN_EXE_credit-ledger"))
                .args(["--db", db, "--now", T0, "--wait", "2m", "--json"])
                .args(["credit", "acme", "1", "--key", &key])
                .env_remove("CREDIT_LEDGER_DB")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn credit-ledger")
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("wait for credit-ledger");
        assert_eq!(
            out.status.code(),
            Some(0),
            "process {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let b = ws.run(&["--json", "balance", "acme"]).ok().json();
    assert_eq!(b["balance"], 1 + PROCESSES as u64, "{b}");
    assert_eq!(b["transactions"], 1 + PROCESSES as u64, "{b}");
}

/// `--wait 0` is the behaviour before there was a wait: a file another process holds is refused
/// at once (exit 1), and the message says how to wait.
#[test]
fn wait_zero_fails_at_once_on_a_busy_file() {
    let ws = Ws::new();
    ws.run(&["--now", T0, "credit", "acme", "5", "--key", "k1"])
        .ok();
    let held = credit_ledger::Ledger::open(&ws.db).expect("hold the file open");
    let r = ws.run(&["--wait", "0", "balance", "acme"]).failed(1);
    assert!(
        r.stderr.contains("open in another process") && r.stderr.contains("--wait"),
        "{}",
        r.stderr
    );
    let r = ws
        .run(&[
            "--json", "--wait", "0", "--now", T0, "credit", "acme", "1", "--key", "k2",
        ])
        .failed(1);
    assert_eq!(r.json()["error"]["kind"], "storage", "{}", r.stdout);
    drop(held);
    let b = ws
        .run(&["--wait", "0", "--json", "balance", "acme"])
        .ok()
        .json();
    assert_eq!(b["balance"], 5, "the refused credit changed nothing");
    // A wait needs a unit, and has a limit.
    ws.run(&["--wait", "5", "balance", "acme"]).failed(2);
    ws.run(&["--wait", "2h", "balance", "acme"]).failed(2);
    ws.run(&["--wait", "soon", "balance", "acme"]).failed(2);
}

/// `--now 2027-12-01` typed for 2026 would stamp a write a year ahead, and every later write
/// with the real clock (refunds included) would then fail as a clock gone backwards. A write at
/// a `--now` further ahead of the system clock than the backwards-clock tolerance (one minute)
/// is refused unless the operator passes `--allow-future-now`; reads are not affected.
#[test]
fn a_write_far_ahead_of_the_system_clock_needs_allow_future_now() {
    let ws = Ws::new();
    ws.run(&["--now", T0, "credit", "acme", "100", "--key", "k1"])
        .ok();
    let system_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits u64");
    let year_ahead = (system_ms + 365 * 86_400_000).to_string();
    for ahead in [year_ahead.as_str(), "18446744073709551615"] {
        let r = ws
            .run(&[
                "--json", "--now", ahead, "credit", "acme", "5", "--key", "typo",
            ])
            .failed(2);
        assert_eq!(r.json()["error"]["kind"], "future_now", "{}", r.stdout);
        assert!(r.stderr.contains("--allow-future-now"), "{}", r.stderr);
        ws.run(&["--now", ahead, "start", "g1", "--workspace", "acme"])
            .failed(2);
    }
    ws.run(&["--now", &year_ahead, "sweep"]).failed(2);
    // Nothing was written, and reading at a future time is fine.
    let b = ws
        .run(&["--json", "--now", &year_ahead, "balance", "acme"])
        .ok()
        .json();
    assert_eq!(
        (b["balance"].as_u64(), b["transactions"].as_u64()),
        (Some(100), Some(1))
    );
    // Within the tolerance a --now ahead is accepted (a clock a few seconds fast).
    let soon = (system_ms + 20_000).to_string();
    ws.run(&["--now", &soon, "credit", "acme", "1", "--key", "k2"])
        .ok();
    // The operator can insist.
    let r = ws
        .run(&[
            "--json",
            "--allow-future-now",
            "--now",
            &year_ahead,
            "credit",
            "acme",
            "5",
            "--key",
            "typo",
        ])
        .ok()
        .json();
    assert_eq!(r["balance_after"], 106, "{r}");
}

/// README is the record a reader of the repository meets: it documents every command and
/// global option the tool has, and it names no document the repository does not contain (it
/// once referred to "the starting design", a document only its authors had seen).
#[test]
fn readme_documents_every_command_and_option_and_only_documents_it_has() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let dir = tempfile::tempdir().expect("tempdir");
    let help = run_in(dir.path(), &["--help"]).ok().stdout;
    let mut section = "";
    let mut seen = 0;
    for line in help.lines() {
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or("");
        let documented = match section {
            "Commands:" if word != "help" => readme.contains(&format!("| `{word}")),
            "Options:" if word.starts_with("--") => readme.contains(&format!("| `{word}")),
            _ => continue,
        };
        assert!(documented, "README's CLI reference lacks `{word}`");
        seen += 1;
    }
    assert!(
        seen > 10,
        "read the commands and options from --help:\n{help}"
    );
    for phrase in ["starting design", "original design", "the design doc"] {
        assert!(
            !readme.to_lowercase().contains(phrase),
            "README refers to {phrase:?}, which a reader of the repository has never seen"
        );
    }
    // Every Markdown document it names is in the repository.
    for word in readme.split(|c: char| c.is_whitespace() || "()[]`,;:".contains(c)) {
        let word = word.trim_end_matches('.');
        if word.ends_with(".md") && !word.contains("://") {
            assert!(
                root.join(word).exists(),
                "README names {word}, which is not in the repository"
            );
        }
    }
}

/// Times go in in any documented form (an offset, Unix milliseconds, durations in days) and
/// come out in the zone `--tz` names: table cells and headers, sentences, and the `at` strings
/// of JSON and CSV, while `at_ms` is the same in every zone. `local` is the machine's zone,
/// which the test sets through `TZ` so that it does not depend on the machine.
#[test]
fn tz_prints_times_in_the_operators_zone() {
    let ws = Ws::new();
    // 10:00 in Berlin is 09:00 UTC (winter, +01:00).
    ws.run(&[
        "--now",
        "2026-03-01T10:00:00+01:00",
        "credit",
        "acme",
        "100",
        "--key",
        "k1",
    ])
    .ok();
    // 2026-03-01T09:01:00Z as Unix milliseconds; a one-day timeout.
    ws.run(&[
        "--now",
        "1772355660000",
        "start",
        "g1",
        "--workspace",
        "acme",
        "--feature",
        "Image",
        "--cost",
        "5",
        "--timeout",
        "1d",
    ])
    .ok();
    // Summer time: 12:00 UTC is 14:00 in Berlin (+02:00).
    ws.run(&[
        "--now",
        "2026-07-01T12:00:00Z",
        "credit",
        "acme",
        "1",
        "--key",
        "k2",
    ])
    .ok();

    let utc = ws.run(&["--json", "history", "acme"]).ok().json();
    let berlin = ws
        .run(&["--json", "--tz", "Europe/Berlin", "history", "acme"])
        .ok()
        .json();
    let at = |v: &Value, i: usize| v["entries"][i]["at"].as_str().unwrap_or("").to_string();
    assert_eq!(
        [at(&utc, 0), at(&utc, 1), at(&utc, 2)],
        [
            "2026-07-01T12:00:00Z",
            "2026-03-01T09:01:00Z",
            "2026-03-01T09:00:00Z"
        ]
    );
    assert_eq!(
        [at(&berlin, 0), at(&berlin, 1), at(&berlin, 2)],
        [
            "2026-07-01T14:00:00+02:00",
            "2026-03-01T10:01:00+01:00",
            "2026-03-01T10:00:00+01:00"
        ]
    );
    for i in 0..3 {
        assert_eq!(utc["entries"][i]["at_ms"], berlin["entries"][i]["at_ms"]);
    }

    let table = ws
        .run(&["--tz", "Europe/Berlin", "history", "acme"])
        .ok()
        .stdout;
    assert!(table.starts_with("ID  DATE (Europe/Berlin)"), "{table}");
    assert!(table.contains("2026-07-01 14:00:00"), "{table}");
    assert!(table.contains("2026-03-01 10:00:00"), "{table}");
    let g = ws
        .run(&["--tz", "Europe/Berlin", "generation", "g1"])
        .ok()
        .stdout;
    assert!(
        g.contains("2026-03-01 10:01:00 CET") && g.contains("2026-03-02 10:01:00 CET"),
        "{g}"
    );
    assert!(g.contains("(timeout 24h)"), "{g}");
    let csv = ws
        .run(&["--tz", "Europe/Berlin", "export", "acme", "--format", "csv"])
        .ok()
        .stdout;
    assert!(csv.contains("\n1,2026-03-01T10:00:00+01:00,acme,"), "{csv}");

    // `local` is the machine's zone: here whatever TZ says.
    let ny = run_env(
        ws.dir(),
        &[("TZ", "America/New_York")],
        &[
            "--db",
            ws.db.to_str().expect("utf-8 path"),
            "--json",
            "--tz",
            "local",
            "history",
            "acme",
        ],
    )
    .ok()
    .json();
    assert_eq!(at(&ny, 2), "2026-03-01T04:00:00-05:00");

    let r = ws
        .run(&["--tz", "Mars/Olympus_Mons", "history", "acme"])
        .failed(2);
    assert!(r.stderr.contains("Europe/Berlin"), "{}", r.stderr);
}

#[test]
fn simulate_without_db_uses_a_named_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_credit-ledger"))
        .args([
            "simulate",
            "--generations",
            "300",
            "--workspaces",
            "3",
            "--threads",
            "3",
        ])
        .current_dir(dir.path())
        .env_remove("CREDIT_LEDGER_DB")
        .env("TMPDIR", dir.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("Result: OK"), "{stdout}");
    let named = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Ledger file: "))
        .and_then(|l| l.split(" (").next())
        .expect("the report names the file");
    assert!(Path::new(named).exists(), "{named}");
    assert!(named.starts_with(dir.path().to_str().unwrap()), "{named}");
    assert!(
        !dir.path().join("credit-ledger.redb").exists(),
        "the default file is not touched"
    );
    println!("cli: simulate without --db wrote {named}");
}

/// Credit grants from the command line: a trial that expires mid-run and a pack; the charge,
/// the refund into the trial's grace part, `show` naming the grants, `grants`, the sweep's
/// Expiration, `history --type expiration` and `void-grant`.
#[test]
fn grants_expire_refund_into_a_grace_part_and_void_from_the_command_line() {
    let ws = Ws::new();
    let at = |hms: &str| format!("2026-03-01T{hms}Z");
    ws.run(&[
        "--now",
        &at("09:00:00"),
        "credit",
        "acme",
        "8",
        "--key",
        "trial-acme",
        "--kind",
        "grant",
        "--memo",
        "Trial credits",
        "--expires-at",
        &at("09:02:00"),
    ])
    .ok();
    ws.run(&[
        "--now",
        &at("09:00:00"),
        "credit",
        "acme",
        "100",
        "--key",
        "order-1001",
        "--memo",
        "Top-up pack",
    ])
    .ok();
    let bal = ws
        .run(&["--now", &at("09:00:00"), "balance", "acme"])
        .ok()
        .stdout;
    assert!(
        bal.contains("Next expiry   8 credits at 2026-03-01 09:02:00 UTC (in 2m)"),
        "{bal}"
    );
    let c = ws
        .run(&[
            "--now",
            &at("09:00:00"),
            "--json",
            "start",
            "gen-1",
            "--workspace",
            "acme",
            "--feature",
            "Quick Video",
            "--cost",
            "12",
        ])
        .ok()
        .json();
    let usage = c["usage_txn"].as_u64().unwrap().to_string();
    let show = ws.run(&["show", &usage]).ok().stdout;
    assert!(
        show.contains("Paid from       8 from Trial credits, 4 from Top-up pack"),
        "{show}"
    );
    let r = ws
        .run(&[
            "--now",
            &at("09:03:00"),
            "--json",
            "fail",
            "gen-1",
            "--reason",
            "model-failure",
        ])
        .ok()
        .json();
    let refund = r["refund_txn"].as_u64().unwrap().to_string();
    let show = ws.run(&["--json", "show", &refund]).ok().json();
    let parts: Vec<(String, u64, u64)> = show["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["grant"].as_str().unwrap().to_string(),
                a["part"].as_u64().unwrap(),
                a["credits"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec![("trial-acme".into(), 1, 8), ("order-1001".into(), 0, 4)]
    );
    assert_eq!(
        show["allocations"][0]["spendable_until"],
        "2026-03-02T09:03:00Z"
    );
    let g = ws
        .run(&["--now", &at("09:03:00"), "--json", "grants", "acme"])
        .ok()
        .json();
    assert_eq!(g["spendable"], 108, "{g}");
    let states: Vec<&str> = g["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        vec!["expired-unswept", "spendable", "spendable"],
        "{g}"
    );
    // A day later the returned trial credits lapse: the sweep writes their Expiration.
    let s = ws
        .run(&["--now", "2026-03-02T10:00:00Z", "--json", "sweep"])
        .ok()
        .json();
    assert_eq!(s["expired"], 1, "{s}");
    assert_eq!(s["expirations"][0]["amount"], 8, "{s}");
    let h = ws
        .run(&["--json", "history", "acme", "--type", "expiration"])
        .ok()
        .json();
    assert_eq!(h["entries"].as_array().unwrap().len(), 1, "{h}");
    assert_eq!(h["entries"][0]["type"], "expiration");
    assert_eq!(h["entries"][0]["amount"], -8);
    let v = ws
        .run(&[
            "--now",
            "2026-03-02T10:00:00Z",
            "--json",
            "void-grant",
            "acme",
            "order-1001",
            "--key",
            "void-1",
            "--memo",
            "refunded by card",
        ])
        .ok()
        .json();
    assert_eq!(
        (v["amount"].as_u64(), v["balance_after"].as_u64()),
        (Some(100), Some(0))
    );
    ws.run(&[
        "void-grant",
        "acme",
        "nope",
        "--key",
        "void-2",
        "--memo",
        "x",
    ])
    .failed(1);
    ws.run(&["credit", "acme", "5", "--key", "k", "--priority", "5000"])
        .failed(2);
    ws.run(&["verify"]).ok();
}

/// A refund reported with a clock far behind the log is written anyway (issue 11, item 3),
/// and the operator sees it: `show` says what the clock read, and the JSON row carries it.
#[test]
fn a_refund_with_a_clock_behind_the_log_is_written_and_shown_as_such() {
    let ws = Ws::new();
    let later = "2026-03-01T12:00:00Z";
    ws.run(&["--now", later, "credit", "acme", "100", "--key", "k1"])
        .ok();
    ws.run(&[
        "--now",
        later,
        "start",
        "g1",
        "--workspace",
        "acme",
        "--feature",
        "Quick Video",
        "--cost",
        "12",
    ])
    .ok();
    // Three hours behind the log: beyond the one-minute tolerance.
    let r = ws
        .run(&[
            "--json",
            "--now",
            T0,
            "fail",
            "g1",
            "--reason",
            "model-failure",
        ])
        .ok()
        .json();
    let refund_id = r["refund_txn"]
        .as_u64()
        .or_else(|| r["txn_id"].as_u64())
        .unwrap_or_else(|| panic!("a refund receipt: {r}"));
    let row = ws
        .run(&["--json", "show", &refund_id.to_string()])
        .ok()
        .json();
    assert_eq!(row["type"], "refund", "{row}");
    assert_eq!(row["balance_after"], 100, "{row}");
    assert_eq!(row["untrusted_clock_ms"], 1_772_355_600_000u64, "{row}");
    assert_eq!(row["at"], "2026-03-01T12:00:00Z", "{row}");
    let text = ws.run(&["show", &refund_id.to_string()]).ok().stdout;
    assert!(
        text.contains("Clock") && text.contains("did not trust"),
        "{text}"
    );
    // Other writes at that clock are still refused, with the typed error.
    ws.run(&["--now", T0, "credit", "acme", "1", "--key", "k2"])
        .failed(2);
}
