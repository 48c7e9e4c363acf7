//! Schema-experiment probe (raw redb, not the ledger): the cost of one durable commit with the
//! current 5-table layout against a merged `index: &[u8] -> &[u8]` table.
//!
//! Layouts: `five` (workspaces, transactions, workspace_history, generations, deadlines, as in
//! `src/storage/tables.rs`), `merged` (history, deadlines and workspace records as prefixed
//! keys in one `index` table; generations and transactions separate), `mergedgen` (generations
//! folded into `index` too). Record sizes approximate the ledger's. The file is prefilled with
//! 5,000 generations over 16 workspaces (half finished), then runs N durable starts, then
//! completes the even ones and fails the odd ones, printing per-op latency.
//!
//! ```text
//! cargo build --release --example proto_merge
//! target/release/examples/proto_merge five|merged|mergedgen|one [prefill|start|all|floor] [N]
//! strace -f -c -e trace=pwrite64,fdatasync target/release/examples/proto_merge five start 1000
//! ```
//!
//! `floor` runs the starts, then N durable commits of a single 150-byte insert into one table:
//! the fixed cost of a redb durable commit. Results: BENCHMARKS.md, "Merging the secondary
//! tables".
use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::time::Instant;

const WS: TableDefinition<&str, &[u8]> = TableDefinition::new("workspaces");
const TX: TableDefinition<u64, &[u8]> = TableDefinition::new("transactions");
const HI: TableDefinition<(&str, u8, u64), ()> = TableDefinition::new("workspace_history");
const GE: TableDefinition<&str, &[u8]> = TableDefinition::new("generations");
const DL: TableDefinition<(u64, &str), ()> = TableDefinition::new("deadlines");
const IX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index");

fn hk(ws: &str, cat: u8, id: u64) -> Vec<u8> {
    let mut k = vec![1u8];
    k.extend_from_slice(ws.as_bytes());
    k.push(0);
    k.push(cat);
    k.extend_from_slice(&id.to_be_bytes());
    k
}
fn dk(d: u64, g: &str) -> Vec<u8> {
    let mut k = vec![2u8];
    k.extend_from_slice(&d.to_be_bytes());
    k.extend_from_slice(g.as_bytes());
    k
}
fn wk(ws: &str) -> Vec<u8> {
    let mut k = vec![3u8];
    k.extend_from_slice(ws.as_bytes());
    k
}
fn gk(g: &str) -> Vec<u8> {
    let mut k = vec![4u8];
    k.extend_from_slice(g.as_bytes());
    k
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Five,
    Merged,    // index = history + deadlines + workspaces; generations separate
    MergedGen, // index also holds generations
    One,       // everything, transactions too, in `index`: the bound of any table merge
}

struct P {
    db: Database,
    l: Layout,
    next_tx: u64,
}

const WREC: [u8; 60] = [7; 60];
const TREC: [u8; 150] = [9; 150];
const GREC: [u8; 120] = [5; 120];

impl P {
    fn put_ws(&self, t: &redb::WriteTransaction, ws: &str) {
        match self.l {
            Layout::Five => {
                let mut w = t.open_table(WS).unwrap();
                let _ = w.get(ws).unwrap().map(|v| v.value().len());
                w.insert(ws, &WREC[..]).unwrap();
            }
            _ => {
                let mut w = t.open_table(IX).unwrap();
                let k = wk(ws);
                let _ = w.get(k.as_slice()).unwrap().map(|v| v.value().len());
                w.insert(k.as_slice(), &WREC[..]).unwrap();
            }
        }
    }
    fn put_gen(&self, t: &redb::WriteTransaction, g: &str) {
        match self.l {
            Layout::MergedGen | Layout::One => {
                let mut w = t.open_table(IX).unwrap();
                let k = gk(g);
                let _ = w.get(k.as_slice()).unwrap().map(|v| v.value().len());
                w.insert(k.as_slice(), &GREC[..]).unwrap();
            }
            _ => {
                let mut w = t.open_table(GE).unwrap();
                let _ = w.get(g).unwrap().map(|v| v.value().len());
                w.insert(g, &GREC[..]).unwrap();
            }
        }
    }
    fn hist(&self, t: &redb::WriteTransaction, ws: &str, cat: u8, id: u64, insert: bool) {
        match self.l {
            Layout::Five => {
                let mut h = t.open_table(HI).unwrap();
                if insert {
                    h.insert((ws, cat, id), ()).unwrap();
                } else {
                    h.remove((ws, cat, id)).unwrap();
                }
            }
            _ => {
                let mut h = t.open_table(IX).unwrap();
                let k = hk(ws, cat, id);
                if insert {
                    h.insert(k.as_slice(), &[][..]).unwrap();
                } else {
                    h.remove(k.as_slice()).unwrap();
                }
            }
        }
    }
    fn dl(&self, t: &redb::WriteTransaction, d: u64, g: &str, insert: bool) {
        match self.l {
            Layout::Five => {
                let mut h = t.open_table(DL).unwrap();
                if insert {
                    h.insert((d, g), ()).unwrap();
                } else {
                    h.remove((d, g)).unwrap();
                }
            }
            _ => {
                let mut h = t.open_table(IX).unwrap();
                let k = dk(d, g);
                if insert {
                    h.insert(k.as_slice(), &[][..]).unwrap();
                } else {
                    h.remove(k.as_slice()).unwrap();
                }
            }
        }
    }
    fn txn(&mut self, t: &redb::WriteTransaction, ws: &str, cat: u8) -> u64 {
        let id = self.next_tx;
        self.next_tx += 1;
        if self.l == Layout::One {
            let mut k = vec![5u8];
            k.extend_from_slice(&id.to_be_bytes());
            t.open_table(IX)
                .unwrap()
                .insert(k.as_slice(), &TREC[..])
                .unwrap();
        } else {
            t.open_table(TX).unwrap().insert(id, &TREC[..]).unwrap();
        }
        self.hist(t, ws, cat, id, true);
        id
    }
    fn begin(&self, durable: bool) -> redb::WriteTransaction {
        let mut t = self.db.begin_write().unwrap();
        t.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .unwrap();
        t
    }
    fn start(&mut self, g: &str, ws: &str, d: u64, durable: bool) -> u64 {
        let t = self.begin(durable);
        let id = self.txn(&t, ws, 2);
        self.put_gen(&t, g);
        self.dl(&t, d, g, true);
        self.put_ws(&t, ws);
        t.commit().unwrap();
        id
    }
    fn complete(&mut self, g: &str, ws: &str, d: u64, uid: u64) {
        let t = self.begin(true);
        self.put_gen(&t, g);
        self.hist(&t, ws, 2, uid, false);
        self.hist(&t, ws, 3, uid, true);
        self.dl(&t, d, g, false);
        self.put_ws(&t, ws);
        t.commit().unwrap();
    }
    fn fail(&mut self, g: &str, ws: &str, d: u64, uid: u64) {
        let t = self.begin(true);
        self.txn(&t, ws, 5);
        self.put_gen(&t, g);
        self.hist(&t, ws, 2, uid, false);
        self.hist(&t, ws, 4, uid, true);
        self.dl(&t, d, g, false);
        self.put_ws(&t, ws);
        t.commit().unwrap();
    }
}

fn stats(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "{name:>10}: median {:7.1} µs  mean {:7.1} µs  p90 {:7.1} µs",
        v[v.len() / 2],
        mean,
        v[v.len() * 9 / 10]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let l = match args[1].as_str() {
        "five" => Layout::Five,
        "merged" => Layout::Merged,
        "one" => Layout::One,
        _ => Layout::MergedGen,
    };
    let phase = args.get(2).map(String::as_str).unwrap_or("all");
    let n: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(1000);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/proto");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.redb", args[1]));
    let _ = std::fs::remove_file(&path);
    let db = Database::create(&path).unwrap();
    let mut p = P { db, l, next_tx: 1 };
    {
        let t = p.begin(true);
        t.open_table(WS).unwrap();
        t.open_table(TX).unwrap();
        t.open_table(HI).unwrap();
        t.open_table(GE).unwrap();
        t.open_table(DL).unwrap();
        t.open_table(IX).unwrap();
        t.commit().unwrap();
    }
    let wss: Vec<String> = (0..16).map(|i| format!("workspace-{i:02}")).collect();
    // prefill: 5000 generations, half finished, in batches
    let base = 1_700_000_000_000u64;
    let mut running = Vec::new();
    for b in 0..50 {
        for i in 0..100 {
            let k = b * 100 + i;
            let g = format!("gen-{k:08}");
            let ws = &wss[k % 16];
            let d = base + 3_600_000 + k as u64;
            let uid = p.start(&g, ws, d, false);
            running.push((g, ws.clone(), d, uid));
        }
    }
    // finish half so the indexes have mixed content; the other half stays running
    {
        let _still_running = running.split_off(2500);
        for (g, ws, d, uid) in running.drain(..) {
            let t = p.begin(false);
            p.put_gen(&t, &g);
            p.hist(&t, &ws, 2, uid, false);
            p.hist(&t, &ws, 3, uid, true);
            p.dl(&t, d, &g, false);
            p.put_ws(&t, &ws);
            t.commit().unwrap();
        }
    }
    let t = p.begin(true);
    t.commit().unwrap();
    if phase == "prefill" {
        return;
    }
    if phase == "floor0" {
        return;
    }
    eprintln!("ready");
    let mut starts = Vec::new();
    let mut started = Vec::new();
    for k in 0..n {
        let g = format!("new-{k:08}");
        let ws = wss[k % 16].clone();
        let d = base + 7_200_000 + k as u64;
        let t0 = Instant::now();
        let uid = p.start(&g, &ws, d, true);
        starts.push(t0.elapsed().as_secs_f64() * 1e6);
        started.push((g, ws, d, uid));
    }
    if phase == "start" {
        stats("start", starts);
        return;
    }
    if phase == "floor" {
        // one durable commit of a single 150-byte insert into one table: redb's fixed cost
        let mut v = Vec::new();
        for k in 0..n as u64 {
            let t0 = Instant::now();
            let t = p.begin(true);
            t.open_table(TX)
                .unwrap()
                .insert(1_000_000 + k, &TREC[..])
                .unwrap();
            t.commit().unwrap();
            v.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        stats("floor", v);
        return;
    }
    let mut comps = Vec::new();
    let mut fails = Vec::new();
    for (i, (g, ws, d, uid)) in started.iter().enumerate() {
        let t0 = Instant::now();
        if i % 2 == 0 {
            p.complete(g, ws, *d, *uid);
            comps.push(t0.elapsed().as_secs_f64() * 1e6);
        } else {
            p.fail(g, ws, *d, *uid);
            fails.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    stats("start", starts);
    stats("complete", comps);
    stats("fail", fails);
}
