//! The feed commands of `credit-ledger`: `changes` (and, with consumers, `ack`), driven as
//! real processes on a file the library wrote.

use std::path::{Path, PathBuf};
use std::process::Command;

use credit_ledger::{Credit, Ledger, ManualClock, Options, RefundReason, StartGeneration};
use serde_json::Value;

const T0_MS: u64 = 1_772_355_600_000; // 2026-03-01T09:00:00Z

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(db: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_credit-ledger"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("CREDIT_LEDGER_DB")
        .output()
        .expect("run credit-ledger");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(r: Run) -> String {
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r.stdout
}

fn lines_json(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Two workspaces, a charge and its refund: five transactions.
fn seeded() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.redb");
    let clock = ManualClock::new(T0_MS);
    let ledger = Ledger::open_with(&db, Options::default().clock(clock.clone())).unwrap();
    ledger.credit(Credit::purchase("acme", 100, "o-1")).unwrap();
    ledger.credit(Credit::grant("beta", 40, "o-2")).unwrap();
    ledger
        .start_generation(StartGeneration::new("g-1", "acme", "Quick Video", 12))
        .unwrap();
    clock.advance_ms(60_000);
    ledger
        .fail_generation("g-1", RefundReason::ModelFailure, "no frames")
        .unwrap();
    ledger.credit(Credit::purchase("beta", 5, "o-3")).unwrap();
    drop(ledger);
    (dir, db)
}

#[test]
fn changes_prints_the_global_log_as_json_lines_in_the_export_shape() {
    let (_dir, db) = seeded();
    let all = lines_json(&ok(run(&db, &["changes", "--json"])));
    let ids: Vec<u64> = all.iter().map(|v| v["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    let ws: Vec<&str> = all
        .iter()
        .map(|v| v["workspace"].as_str().unwrap())
        .collect();
    assert_eq!(ws, vec!["acme", "beta", "acme", "acme", "beta"]);
    assert_eq!(all[3]["type"], "refund");
    assert_eq!(all[3]["refund_of"], 3);
    // The same objects, field for field, as `export --format jsonl` of each workspace.
    let export = lines_json(&ok(run(&db, &["export", "acme", "--format", "jsonl"])));
    let acme: Vec<&Value> = all.iter().filter(|v| v["workspace"] == "acme").collect();
    assert_eq!(acme, export.iter().collect::<Vec<_>>());

    let after = lines_json(&ok(run(
        &db,
        &["changes", "--after", "2", "--limit", "2", "--json"],
    )));
    let ids: Vec<u64> = after.iter().map(|v| v["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![3, 4]);
    assert!(ok(run(&db, &["changes", "--after", "5", "--json"])).is_empty());

    let text = ok(run(&db, &["changes", "--after", "3"]));
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().next().unwrap().starts_with("#4  "), "{text}");

    let bad = run(&db, &["changes", "--limit", "1001"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("page limit"), "{}", bad.stderr);
}

#[test]
fn a_consumer_reads_from_its_stored_position_and_acks_forward_only() {
    let (_dir, db) = seeded();
    let ids = |stdout: &str| -> Vec<u64> {
        lines_json(stdout)
            .iter()
            .map(|v| v["id"].as_u64().unwrap())
            .collect()
    };
    let first = ok(run(
        &db,
        &["changes", "--consumer", "sync", "--limit", "3", "--json"],
    ));
    assert_eq!(ids(&first), vec![1, 2, 3]);
    // Not acked yet: the same entries again (at least once).
    let again = ok(run(
        &db,
        &["changes", "--consumer", "sync", "--limit", "3", "--json"],
    ));
    assert_eq!(ids(&again), vec![1, 2, 3]);
    let acked: Value =
        serde_json::from_str(&ok(run(&db, &["ack", "sync", "3", "--json"]))).unwrap();
    assert_eq!(
        acked,
        serde_json::json!({"consumer": "sync", "position": 3, "replay": false})
    );
    let rest = ok(run(&db, &["changes", "--consumer", "sync", "--json"]));
    assert_eq!(ids(&rest), vec![4, 5]);
    // A retried ack is a replay; backwards and beyond the end are refused (exit 1), and
    // change nothing.
    assert!(ok(run(&db, &["ack", "sync", "3"])).contains("already there"));
    for bad in ["2", "6"] {
        let r = run(&db, &["ack", "sync", bad]);
        assert_eq!(r.code, 1, "ack {bad}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains("consumer `sync`"), "{}", r.stderr);
    }
    assert_eq!(
        ids(&ok(run(&db, &["changes", "--consumer", "sync", "--json"]))),
        vec![4, 5]
    );
    // Another consumer has its own position.
    assert_eq!(
        ids(&ok(run(&db, &["changes", "--consumer", "other", "--json"]))).len(),
        5
    );
    let both = run(&db, &["changes", "--consumer", "sync", "--after", "1"]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    let bad_name = run(&db, &["ack", "", "1"]);
    assert_eq!(bad_name.code, 2, "{}", bad_name.stderr);
}

#[test]
fn changes_follow_prints_entries_as_other_processes_commit_them() {
    let (_dir, db) = seeded();
    let follower = Command::new(env!("CARGO_BIN_EXE_credit-ledger"))
        .arg("--db")
        .arg(&db)
        .args([
            "--json",
            "changes",
            "--after",
            "4",
            "--follow",
            "--poll-ms",
            "20",
            "--max-entries",
            "4",
        ])
        .env_remove("CREDIT_LEDGER_DB")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Should a write below fail, the follower must not outlive the test.
    struct KillOnDrop(Option<std::process::Child>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(c) = &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut follower = KillOnDrop(Some(follower));
    // Three writes by other processes; they wait for the file while the follower reads it.
    for i in 0..3 {
        let key = format!("later-{i}");
        ok(run(
            &db,
            &["--wait", "60s", "credit", "acme", "1", "--key", &key],
        ));
    }
    // The follower exits by itself after its fourth entry: #5 was there, #6..#8 came later.
    // (Its wait is bounded by the writes above, which finish; no timing is asserted.)
    let out = follower.0.take().unwrap().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines_json(&String::from_utf8_lossy(&out.stdout));
    let ids: Vec<u64> = lines.iter().map(|v| v["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![5, 6, 7, 8]);
    assert_eq!(lines[3]["key"], "later-2");

    let bad = run(&db, &["changes", "--follow", "--limit", "3"]);
    assert_eq!(bad.code, 2, "--limit and --follow conflict: {}", bad.stderr);
    let bad = run(&db, &["changes", "--max-entries", "3"]);
    assert_eq!(bad.code, 2, "--max-entries needs --follow: {}", bad.stderr);
}

#[test]
fn grant_expiring_notices_from_the_shell_sweep_history_show_and_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.redb");
    let at = |t: &str| vec!["--now".to_string(), t.to_string()];
    let run_at = |t: &str, args: &[&str]| {
        let mut all = at(t);
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run(&db, &all)
    };
    ok(run_at(
        "2026-03-01T09:00:00Z",
        &[
            "credit",
            "acme",
            "500",
            "--key",
            "monthly",
            "--memo",
            "Monthly credits",
            "--expires-at",
            "2026-03-31T00:00:00Z",
            "--grant-notice",
            "3d",
        ],
    ));
    let history = |args: &[&str]| -> Value {
        let mut all = vec!["history", "acme", "--type", "grant-expiring", "--json"];
        all.extend(args);
        serde_json::from_str(&ok(run(&db, &all))).unwrap()
    };
    assert_eq!(history(&[])["entries"].as_array().unwrap().len(), 0);
    // Not due yet; then due: the sweep writes it and lists it.
    let r: Value =
        serde_json::from_str(&ok(run_at("2026-03-27T23:59:00Z", &["sweep", "--json"]))).unwrap();
    assert_eq!(r["notices"].as_array().unwrap().len(), 0, "{r}");
    let r: Value =
        serde_json::from_str(&ok(run_at("2026-03-28T00:00:00Z", &["sweep", "--json"]))).unwrap();
    let n = &r["notices"][0];
    assert_eq!(
        (
            n["grant"].as_str(),
            n["expiring"].as_u64(),
            n["expires_at"].as_str()
        ),
        (Some("monthly"), Some(500), Some("2026-03-31T00:00:00Z")),
        "{r}"
    );
    let text = ok(run_at("2026-03-28T00:01:00Z", &["sweep"]));
    assert!(!text.contains("expires soon"), "a second notice: {text}");
    let h = history(&[]);
    let rows = h["entries"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{h}");
    let row = &rows[0];
    assert_eq!(row["type"], "grant-expiring");
    assert_eq!(row["amount"], 0);
    assert_eq!(row["title"], "Monthly credits");
    assert_eq!(row["balance_before"], row["balance_after"]);
    assert_eq!(row["expiring"]["grant"], "monthly");
    assert_eq!(row["expiring"]["credits"], 500);
    assert_eq!(row["expiring"]["expires_at"], "2026-03-31T00:00:00Z");
    let id = row["id"].as_u64().unwrap().to_string();
    let show = ok(run(&db, &["show", &id]));
    assert!(show.contains("Grant Expiring"), "{show}");
    assert!(
        show.contains("500 of Monthly credits (spendable until 2026-03-31 00:00:00 UTC)"),
        "{show}"
    );
    let feed = lines_json(&ok(run(&db, &["changes", "--json"])));
    assert_eq!(
        feed.iter()
            .filter(|e| e["type"] == "grant-expiring" && e["expiring"]["credits"] == 500)
            .count(),
        1
    );
    // The window is checked like every option: a usage error, nothing written.
    let r = run_at(
        "2026-03-28T00:02:00Z",
        &[
            "credit",
            "acme",
            "1",
            "--key",
            "k2",
            "--grant-notice",
            "10s",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("grant_expiring_notice_ms"),
        "{}",
        r.stderr
    );
}
