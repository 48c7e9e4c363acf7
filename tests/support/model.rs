//! Model-based test harness, shared by `tests/model.rs` (stable, seeded PRNG) and the
//! `ops_model` cargo-fuzz target (`fuzz/fuzz_targets/ops_model.rs`).
//!
//! [`run`] decodes raw bytes into a bounded sequence of operations (a hand-written decoder over
//! a byte cursor, so no `arbitrary` dependency is needed), runs each one against a real
//! [`Ledger`] and against a plain reference model made of `BTreeMap`s, and panics with a
//! description of the step as soon as the two disagree:
//!
//! - every result must match exactly: the receipt (ids, balances, times, replay flag) or the
//!   error variant and its fields;
//! - after every step every workspace summary and every generation of the id pool must match;
//! - every few steps, after every reopen and at the end, `verify()` must be clean and
//!   `totals().is_conserved()` must hold.
//!
//! The ledger lives on an in-memory storage backend that keeps a *durable image* (the bytes as
//! of the last `sync_data`) besides the live bytes. A "crash" cuts the old ledger off from the
//! image (its later writes fail), drops it, rolls the live bytes back to the durable image and
//! reopens: exactly what a power cut after the last fsync leaves behind. A "close" drops and
//! reopens cleanly.
//!
//! [`run_journal`] runs the same steps on a real file ledger with its write-ahead journal (the
//! default for files). There a "crash" copies the ledger file and its journal while the ledger
//! is still open (the bytes a `kill -9` leaves: the ledger file as of its last checkpoint plus
//! whatever redb flushed since, and the journal), then opens the copy, which replays the
//! journal.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use credit_ledger::limits::{
    DEFAULT_GRANT_PRIORITY, DEFAULT_MAX_CLOCK_REGRESSION_MS, DEFAULT_REFUND_GRACE_MS,
    DEFAULT_TIMEOUT_MS, MAX_AMOUNT_CREDITS, MAX_GRANT_PRIORITY, MAX_MEMO_BYTES, MAX_MESSAGE_BYTES,
    MAX_SWEEP_LIMIT, MAX_TIMEOUT_MS, MIN_TIMEOUT_MS,
};
use credit_ledger::{
    format_duration_ms, AckReceipt, Adjust, AlertReceipt, Allocation, Charge, Completion, Credit,
    Error, ExpiryNotice, GenerationState, GenerationView, GrantClosure, GrantExpiringNotice,
    GrantState, GrantView, HistoryFilter, InvalidInput, Ledger, ManualClock, Op, Options, Outcome,
    PageRequest, Receipt, RefundReason, RefundReceipt, StartGeneration, Status, SweepReport,
    TxnKind, VoidGrant, WorkspaceSummary,
};

/// Most operations one input is decoded into.
pub const MAX_STEPS: usize = 256;
/// Most operations in one `apply()` batch.
const MAX_BATCH: usize = 6;
/// Run `verify()` and the conservation check every this many steps.
const VERIFY_EVERY: usize = 16;
const START_MS: u64 = 1_700_000_000_000;

const WORKSPACES: [&str; 4] = ["ws-a", "ws-b", "ws-c", "ws-unknown"];
const GENERATIONS: usize = 20;
const KEYS: usize = 24;
/// The usual amount of each idempotency key, so that reusing a key is mostly a replay.
const KEY_AMOUNTS: [u64; 8] = [
    40,
    25,
    60,
    MAX_AMOUNT_CREDITS,
    5,
    100,
    12,
    MAX_AMOUNT_CREDITS - 9,
];
const FEATURES: [&str; 2] = ["Quick Video", "Image Upscale"];
const MEMOS: [&str; 3] = ["", "promo", "goodwill"];
const TIMEOUTS: [u64; 4] = [MIN_TIMEOUT_MS, 30_000, 600_000, DEFAULT_TIMEOUT_MS];
const CONSUMERS: [&str; 2] = ["sync", "audit-export"];
/// The grant notice window the ledgers run with: 30 minutes, so that among the usual terms
/// some grants get their notice at once, some from the sweep, and some are spent or expired
/// first.
const NOTICE_MS: u64 = 30 * 60_000;

fn gen_id(i: usize) -> String {
    format!("gen-{i:02}")
}

fn key_id(i: usize) -> String {
    format!("key-{i}")
}

// ---------------------------------------------------------------------------------------------
// The storage backend with a durable image.

#[derive(Debug, Default)]
struct Image {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges of `live` written since the last sync.
    dirty: Vec<(usize, usize)>,
}

/// A redb backend over a shared in-memory image. `dead` cuts this handle off (a crash).
#[derive(Debug)]
pub struct ImageBackend {
    image: Arc<Mutex<Image>>,
    dead: Arc<AtomicBool>,
}

fn io_err(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

impl ImageBackend {
    fn check(&self) -> std::io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            Err(io_err("simulated crash: the process is gone"))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for ImageBackend {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.image.lock().unwrap().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let img = self.image.lock().unwrap();
        let start = usize::try_from(offset).map_err(|_| io_err("offset out of range"))?;
        let src = img
            .live
            .get(start..start + out.len())
            .ok_or_else(|| io_err("read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        let len = usize::try_from(len).map_err(|_| io_err("length out of range"))?;
        let mut img = self.image.lock().unwrap();
        let old = img.live.len();
        img.live.resize(len, 0);
        img.dirty.push((old.min(len), old.max(len)));
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        let mut img = self.image.lock().unwrap();
        let Image {
            live,
            durable,
            dirty,
        } = &mut *img;
        durable.resize(live.len(), 0);
        for (start, end) in dirty.drain(..) {
            let end = end.min(live.len());
            if start < end {
                durable[start..end].copy_from_slice(&live[start..end]);
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        let mut img = self.image.lock().unwrap();
        let start = usize::try_from(offset).map_err(|_| io_err("offset out of range"))?;
        let dst = img
            .live
            .get_mut(start..start + data.len())
            .ok_or_else(|| io_err("write past the end"))?;
        dst.copy_from_slice(data);
        img.dirty.push((start, start + data.len()));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding bytes into operations.

/// A cursor over the fuzz input; reading past the end yields `None`, which ends decoding.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn below(&mut self, n: usize) -> Option<usize> {
        Some(self.u8()? as usize % n)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
}

/// One step of a test.
#[derive(Debug, Clone)]
pub enum Step {
    /// One operation through the single-operation API (group commit).
    One(Op),
    /// `apply()` of a batch.
    Batch(Vec<Op>),
    /// Move the clock forward.
    Forward(u64),
    /// Move the clock back.
    Back(u64),
    /// Drop and reopen; `crash` rolls the image back to its last sync first. A crash of a file
    /// ledger may first try a `separate` branch on a copy of what the crash left (see
    /// [`Separation`]); the ledger then goes on from the crash itself.
    Reopen {
        crash: bool,
        separate: Option<Separation>,
    },
    /// Set a workspace's balance alert this many credits below its balance now (so that the
    /// next charges cross it): `Op::SetAlert` with a threshold only the run can know.
    AlertNear { workspace: usize, below_by: u64 },
}

/// What a careless operator, a backup tool or a second program does to the pair (ledger file,
/// journal) after a crash. Each must end "refused" (a typed error naming the journal, which is
/// left as it was) or "nothing lost" (the open matches the model).
#[derive(Debug, Clone, Copy)]
pub enum Separation {
    /// The journal is deleted.
    DeleteJournal,
    /// The journal of a copy of the ledger, written to since the copy, takes its place.
    OtherCopysJournal,
    /// One bit flips, anywhere in the journal before its last entry (a flip inside the last
    /// entry is indistinguishable from a torn write at the crash).
    FlipBit(u16),
    /// The ledger is opened with the journal off.
    JournalOff,
}

fn decode_amount(b: &mut Bytes<'_>) -> Option<u64> {
    Some(match b.u8()? {
        0..=3 => 0,                                   // invalid
        4..=5 => MAX_AMOUNT_CREDITS,                  // pushes totals towards overflow
        6 => MAX_AMOUNT_CREDITS + 1,                  // invalid: too large
        7 => MAX_AMOUNT_CREDITS - u64::from(b.u8()?), // large
        x => u64::from(x % 60) + 1,                   // ordinary
    })
}

fn decode_op(b: &mut Bytes<'_>) -> Option<Op> {
    Some(match b.below(18)? {
        0..=2 => {
            let k = b.below(KEYS)?;
            let flags = b.u8()?;
            // Mostly the key's usual request (a reuse replays it); sometimes anything.
            let (ws, amount, memo, grant) = if flags & 0xc0 != 0 {
                (
                    WORKSPACES[k % 3],
                    KEY_AMOUNTS[k % 8],
                    MEMOS[k % 3],
                    k % 2 == 1,
                )
            } else {
                let memo = MEMOS[(flags as usize >> 1) % MEMOS.len()];
                (
                    WORKSPACES[b.below(3)?],
                    decode_amount(b)?,
                    memo,
                    flags & 1 == 1,
                )
            };
            let (ws, key) = (ws.to_string(), key_id(k));
            let credit = if grant {
                Credit::grant(ws, amount, key)
            } else {
                Credit::purchase(ws, amount, key)
            };
            Op::Credit(decode_terms(b, k, credit.memo(memo))?)
        }
        3 => {
            let ws = WORKSPACES[b.below(WORKSPACES.len())?].to_string();
            let amount = match b.u8()? {
                0..=5 => 0,
                6 => i64::MIN, // magnitude MAX_AMOUNT + 1: invalid
                x => {
                    let m = i64::from(x % 40) + 1;
                    if x & 1 == 0 {
                        m
                    } else {
                        -m
                    }
                }
            };
            let flags = b.u8()?;
            let key = key_id(flags as usize % KEYS);
            let memo = MEMOS[(flags as usize / KEYS) % MEMOS.len()];
            Op::Adjust(Adjust::new(ws, amount, key, memo))
        }
        4..=7 => {
            let id = gen_id(b.below(GENERATIONS)?);
            let ws = WORKSPACES[b.below(WORKSPACES.len())?].to_string();
            let flags = b.u8()?;
            let feature = FEATURES[flags as usize & 1];
            let cost = match (flags >> 1) & 0x1f {
                0 => 0,
                1 => MAX_AMOUNT_CREDITS,
                x => u64::from(x % 8) + 1,
            };
            let mut start = StartGeneration::new(id, ws, feature, cost);
            if flags & 0x20 == 0 {
                // The generation's usual request, so that a reuse is mostly a replay.
                let n = start.generation_id[4..].parse::<usize>().unwrap_or(0);
                start.workspace = WORKSPACES[n % 3].to_string();
                start.feature = FEATURES[n % 2].to_string();
                start.cost_credits = (n % 7) as u64 + 1;
            }
            match flags >> 6 {
                0 | 1 => {}
                2 => start = start.timeout_ms(TIMEOUTS[b.below(TIMEOUTS.len())?]),
                _ => {
                    start = start.timeout_ms(match b.below(3)? {
                        0 => MIN_TIMEOUT_MS - 1,
                        1 => MAX_TIMEOUT_MS + 1,
                        _ => MAX_TIMEOUT_MS,
                    })
                }
            }
            Op::Start(start)
        }
        8..=9 => Op::Complete {
            generation_id: gen_id(b.below(GENERATIONS + 1)?),
        },
        10..=12 => {
            let generation_id = gen_id(b.below(GENERATIONS + 1)?);
            let flags = b.u8()?;
            let reason = RefundReason::ALL[flags as usize % RefundReason::ALL.len()];
            let message = match flags >> 4 {
                0 => "é".repeat(MAX_MESSAGE_BYTES / 2 + 7), // cut at a char boundary
                1 => String::new(),
                x => format!("upstream error {x}"),
            };
            Op::Fail {
                generation_id,
                reason,
                message,
            }
        }
        13 => match b.below(3)? {
            0 => Op::Ack {
                consumer: CONSUMERS[b.below(CONSUMERS.len())?].to_string(),
                // Up to a little past the usual length of a run's log: forward, replays,
                // backwards and beyond the end all happen.
                txn_id: u64::from(b.u8()?),
            },
            1 => Op::SetAlert {
                workspace: WORKSPACES[b.below(WORKSPACES.len())?].to_string(),
                threshold_credits: match b.u8()? {
                    0..=15 => None,
                    16 => Some(0),                      // invalid
                    17 => Some(MAX_AMOUNT_CREDITS + 1), // invalid
                    18 => Some(MAX_AMOUNT_CREDITS),
                    x => Some(u64::from(x % 120) + 1),
                },
            },
            _ => Op::Sweep {
                limit: b.below(5)? as u32,
            },
        },
        14..=15 => Op::Sweep {
            limit: b.below(5)? as u32,
        },
        _ => {
            let flags = b.u8()?;
            Op::VoidGrant(VoidGrant::new(
                WORKSPACES[flags as usize % WORKSPACES.len()],
                key_id(b.below(KEYS + 1)?),
                format!("void-{}", flags >> 4),
                MEMOS[1 + (flags as usize >> 2) % 2],
            ))
        }
    })
}

/// A credit's grant terms: mostly the key's usual ones (so that a reuse replays), sometimes
/// anything, including the invalid (a priority out of range, an expiry before the start or
/// already past).
fn decode_terms(b: &mut Bytes<'_>, k: usize, mut c: Credit) -> Option<Credit> {
    let t = b.u8()?;
    if t & 0x80 == 0 {
        // The usual terms of key k: a few tiers, some expiring within the run, some not yet
        // effective.
        c = c.priority([DEFAULT_GRANT_PRIORITY, 0, 5][k % 3]);
        match k % 4 {
            0 => {}
            1 => c = c.expires_at_ms(START_MS + (k as u64 % 5 + 1) * 20 * 60_000),
            2 => c = c.expires_at_ms(START_MS + DEFAULT_TIMEOUT_MS * 2),
            _ => {
                c = c
                    .effective_at_ms(START_MS + (k as u64 % 3) * 30 * 60_000)
                    .expires_at_ms(START_MS + MAX_TIMEOUT_MS)
            }
        }
        return Some(c);
    }
    c = c.priority(match t & 3 {
        0 => DEFAULT_GRANT_PRIORITY,
        1 => 0,
        2 => MAX_GRANT_PRIORITY,
        _ => MAX_GRANT_PRIORITY + 1,
    });
    let at = START_MS + u64::from(b.u16()?) * 1000;
    match (t >> 2) & 7 {
        0 | 1 => {}
        2 | 3 => c = c.expires_at_ms(at),
        4 => c = c.effective_at_ms(at),
        5 => c = c.effective_at_ms(at).expires_at_ms(at + 60_000),
        6 => c = c.effective_at_ms(at).expires_at_ms(at), // invalid: not after the start
        _ => c = c.expires_at_ms(START_MS - 1),           // invalid: in the past
    }
    Some(c)
}

fn decode_step(b: &mut Bytes<'_>) -> Option<Step> {
    Some(match b.below(32)? {
        0..=16 => Step::One(decode_op(b)?),
        17 => Step::AlertNear {
            workspace: b.below(WORKSPACES.len())?,
            below_by: u64::from(b.u8()? % 4),
        },
        18..=21 => {
            let n = b.below(MAX_BATCH)? + 1;
            let mut ops = Vec::with_capacity(n);
            for _ in 0..n {
                ops.push(decode_op(b)?);
            }
            Step::Batch(ops)
        }
        22..=26 => Step::Forward(match b.below(8)? {
            0..=3 => u64::from(b.u16()?),                  // up to a minute
            4 | 5 => u64::from(b.u16()?) * 20,             // up to ~22 minutes
            6 => DEFAULT_TIMEOUT_MS + u64::from(b.u16()?), // past the default deadline
            _ => MAX_TIMEOUT_MS,                           // past every deadline
        }),
        27..=29 => Step::Back(match b.below(4)? {
            0..=2 => u64::from(b.u16()?) % DEFAULT_MAX_CLOCK_REGRESSION_MS + 1, // tolerated
            _ => DEFAULT_MAX_CLOCK_REGRESSION_MS + 1 + u64::from(b.u16()?),     // refused
        }),
        _ => {
            // The reopen byte decodes as it always did (even: a crash); one crash in eight also
            // tries a separation, from further bytes, so saved inputs keep their meaning.
            let x = b.u8()?;
            let crash = x & 1 == 0;
            let separate = if crash && (x >> 1) % 8 == 7 {
                b.u8().map(|k| match k % 4 {
                    0 => Separation::DeleteJournal,
                    1 => Separation::OtherCopysJournal,
                    2 => Separation::FlipBit(u16::from(k) << 8 | u16::from(x)),
                    _ => Separation::JournalOff,
                })
            } else {
                None
            };
            Step::Reopen { crash, separate }
        }
    })
}

/// Decode `data` into at most [`MAX_STEPS`] steps.
pub fn decode(data: &[u8]) -> Vec<Step> {
    let mut b = Bytes { data, pos: 0 };
    let mut steps = Vec::new();
    while steps.len() < MAX_STEPS {
        match decode_step(&mut b) {
            Some(s) => steps.push(s),
            None => break,
        }
    }
    steps
}

// ---------------------------------------------------------------------------------------------
// The reference model.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct WsModel {
    balance: u64,
    granted: u64,
    spent: u64,
    refunded: u64,
    adj_in: u64,
    adj_out: u64,
    running: u64,
    /// The costs of the running generations.
    held: u64,
    txns: u64,
    created_at: u64,
    expired: u64,
    voided: u64,
}

/// One grant lot: (workspace, grant id, lot) in `Model::lots`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LotModel {
    label: String,
    priority: u32,
    effective: Option<u64>,
    expires: Option<u64>,
    amount: u64,
    remaining: u64,
    allocated: u64,
    returned: u64,
    source_txn: u64,
    grace_lots: u32,
    /// (Expiration or Void, its txn or 0, credits, at)
    closed: Option<(TxnKind, u64, u64)>,
}

impl LotModel {
    fn spendable(&self, now: u64) -> bool {
        self.closed.is_none()
            && self.effective.is_none_or(|e| e <= now)
            && self.expires.is_none_or(|e| now < e)
    }
    fn order(&self, id: &str, lot: u32) -> (u32, u64, u64, String, u32) {
        (
            self.priority,
            self.expires.unwrap_or(u64::MAX),
            self.effective.unwrap_or(0),
            id.to_string(),
            lot,
        )
    }
}

type LotKey = (String, String, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GenModelState {
    Running,
    Succeeded {
        at: u64,
    },
    Refunded {
        at: u64,
        reason: RefundReason,
        refund_txn: u64,
    },
}

#[derive(Debug, Clone)]
struct GenModel {
    ws: String,
    feature: String,
    cost: u64,
    timeout: u64,
    started: u64,
    deadline: u64,
    usage_txn: u64,
    state: GenModelState,
}

#[derive(Debug, Clone)]
struct TxnModel {
    at: u64,
    ws: String,
    kind: TxnKind,
    amount: u64,
    debit: bool,
    before: u64,
    after: u64,
    memo: Option<String>,
    /// For a refund: reason and stored message.
    refund: Option<(RefundReason, String)>,
    /// For a usage or a refund: the generation.
    gen: Option<String>,
}

impl TxnModel {
    fn signed(&self) -> i128 {
        if self.debit {
            -i128::from(self.amount)
        } else {
            i128::from(self.amount)
        }
    }
}

/// The plain reference model.
#[derive(Debug, Clone)]
struct Model {
    clock: u64,
    last_at: u64,
    tolerance: u64,
    /// While a batch runs with a clock too far behind the log: the error its writes other
    /// than refunds get.
    refusal: Option<Error>,
    ws: BTreeMap<String, WsModel>,
    gens: BTreeMap<String, GenModel>,
    /// Index `i` holds transaction id `i + 1`.
    txns: Vec<TxnModel>,
    idem: BTreeMap<String, u64>,
    lots: BTreeMap<LotKey, LotModel>,
    /// The allocations of each transaction that moved grant credits.
    allocs: BTreeMap<u64, Vec<Allocation>>,
    /// Balance alert thresholds by workspace.
    alerts: BTreeMap<String, u64>,
    /// Change-feed consumer positions.
    consumers: BTreeMap<String, u64>,
    /// The grant notice window.
    notice_ms: Option<u64>,
    /// The grant notices not yet due: (due, workspace, grant) -> the grant's expiry.
    notices: BTreeMap<(u64, String, String), u64>,
}

fn overflow(ws: &str, what: &'static str) -> Error {
    Error::Overflow {
        workspace: ws.to_string(),
        what,
    }
}

fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

fn check_text(field: &'static str, v: &str, max: usize, allow_empty: bool) -> Result<(), Error> {
    if v.is_empty() && !allow_empty {
        return Err(InvalidInput::Empty { field, max }.into());
    }
    // The pools hold no over-long or control-character text.
    Ok(())
}

fn check_amount(field: &'static str, credits: u128) -> Result<(), Error> {
    if credits == 0 {
        return Err(InvalidInput::ZeroAmount { field }.into());
    }
    if credits > u128::from(MAX_AMOUNT_CREDITS) {
        return Err(InvalidInput::AmountTooLarge {
            field,
            amount: credits,
            max: MAX_AMOUNT_CREDITS,
        }
        .into());
    }
    Ok(())
}

impl Model {
    fn new(clock: u64) -> Self {
        Model {
            clock,
            last_at: 0,
            tolerance: DEFAULT_MAX_CLOCK_REGRESSION_MS,
            refusal: None,
            ws: BTreeMap::new(),
            gens: BTreeMap::new(),
            txns: Vec::new(),
            idem: BTreeMap::new(),
            lots: BTreeMap::new(),
            allocs: BTreeMap::new(),
            alerts: BTreeMap::new(),
            consumers: BTreeMap::new(),
            notice_ms: Some(NOTICE_MS),
            notices: BTreeMap::new(),
        }
    }

    /// The time a write is stamped with, and the error writes other than refunds get when
    /// the clock is too far behind the log (refunds are written anyway, at the log's time).
    fn effective_now(&self) -> (u64, Option<Error>) {
        if self.clock >= self.last_at {
            (self.clock, None)
        } else if self.last_at - self.clock <= self.tolerance {
            (self.last_at, None)
        } else {
            let refusal = Error::ClockRegressed {
                now_ms: self.clock,
                last_ms: self.last_at,
                behind_ms: self.last_at - self.clock,
                tolerance_ms: self.tolerance,
            };
            (self.last_at, Some(refusal))
        }
    }

    /// Refuse a write that is not a refund while the clock is untrusted.
    fn trust_clock(&self) -> Result<(), Error> {
        self.refusal.clone().map_or(Ok(()), Err)
    }

    fn earliest_deadline(&self) -> Option<u64> {
        let deadline = self
            .gens
            .values()
            .filter(|g| g.state == GenModelState::Running)
            .map(|g| g.deadline)
            .min();
        let expiry = self
            .lots
            .values()
            .filter(|l| l.closed.is_none())
            .filter_map(|l| l.expires)
            .min();
        let notice = self.notices.keys().next().map(|k| k.0);
        [deadline, expiry, notice].into_iter().flatten().min()
    }

    /// Append the `GrantExpiring` notice of grant `id` (spendable, with credits left).
    fn write_notice(&mut self, now: u64, ws: &str, id: &str) -> GrantExpiringNotice {
        let l = &self.lots[&(ws.to_string(), id.to_string(), 0)];
        let (credits, expires) = (l.remaining, l.expires.expect("an expiring grant"));
        let w = self.ws.get_mut(ws).expect("the grant's workspace");
        w.txns += 1;
        let balance = w.balance;
        let txn = self.append(
            now,
            TxnModel {
                at: now,
                ws: ws.to_string(),
                kind: TxnKind::GrantExpiring,
                amount: 0,
                debit: false,
                before: balance,
                after: balance,
                memo: None,
                refund: None,
                gen: None,
            },
        );
        self.allocs.insert(
            txn,
            vec![Allocation {
                grant_id: id.to_string(),
                lot: 0,
                credits,
                spendable_until_ms: Some(expires),
            }],
        );
        GrantExpiringNotice {
            txn_id: txn,
            workspace: ws.to_string(),
            grant_id: id.to_string(),
            expires_at_ms: expires,
            expiring_credits: credits,
            at_ms: now,
        }
    }

    /// The spendable lots of `ws` in drawdown order.
    fn spendable_lots(&self, ws: &str, now: u64) -> Vec<LotKey> {
        let mut v: Vec<(_, LotKey)> = self
            .lots
            .iter()
            .filter(|((w, _, _), l)| w == ws && l.spendable(now) && l.remaining > 0)
            .map(|(k, l)| (l.order(&k.1, k.2), k.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    }

    /// What a debit of `cost` would take; refused when it is more than the spendable balance
    /// or would span more than `MAX_LOTS_PER_TRANSACTION` lots.
    fn plan(&self, ws: &str, now: u64, cost: u64) -> Result<Vec<(LotKey, u64)>, Error> {
        let mut need = cost;
        let mut spendable = 0u64;
        let mut out = Vec::new();
        for k in self.spendable_lots(ws, now) {
            let r = self.lots[&k].remaining;
            spendable = spendable.saturating_add(r);
            if need > 0 {
                if out.len() == credit_ledger::limits::MAX_LOTS_PER_TRANSACTION {
                    return Err(Error::TooManyLots {
                        workspace: ws.to_string(),
                        max_lots: credit_ledger::limits::MAX_LOTS_PER_TRANSACTION,
                    });
                }
                let c = need.min(r);
                need -= c;
                out.push((k, c));
            }
            if need == 0 {
                return Ok(out);
            }
        }
        Err(Error::InsufficientCredits {
            workspace: ws.to_string(),
            balance_credits: spendable,
            required_credits: cost,
        })
    }

    fn take(&mut self, plan: Vec<(LotKey, u64)>) -> Vec<Allocation> {
        plan.into_iter()
            .map(|(k, c)| {
                let l = self.lots.get_mut(&k).unwrap();
                l.remaining -= c;
                l.allocated += c;
                Allocation {
                    grant_id: k.1.clone(),
                    lot: k.2,
                    credits: c,
                    spendable_until_ms: l.expires,
                }
            })
            .collect()
    }

    fn give_back(
        &mut self,
        now: u64,
        ws: &str,
        usage_txn: u64,
        refund_txn: u64,
    ) -> Vec<Allocation> {
        let grace_until = now.saturating_add(DEFAULT_REFUND_GRACE_MS);
        let drawn = self.allocs[&usage_txn].clone();
        let mut out = Vec::new();
        for a in drawn {
            let key = (ws.to_string(), a.grant_id.clone(), a.lot);
            let l = self.lots.get_mut(&key).unwrap();
            if l.closed.is_none() && l.expires.is_none_or(|e| e >= grace_until) {
                l.remaining += a.credits;
                l.returned += a.credits;
                out.push(Allocation {
                    spendable_until_ms: l.expires,
                    ..a
                });
                continue;
            }
            let l0 = self
                .lots
                .get_mut(&(ws.to_string(), a.grant_id.clone(), 0))
                .unwrap();
            l0.grace_lots += 1;
            let lot = LotModel {
                effective: None,
                expires: Some(grace_until),
                amount: a.credits,
                remaining: a.credits,
                allocated: 0,
                returned: 0,
                source_txn: refund_txn,
                grace_lots: 0,
                closed: None,
                ..l0.clone()
            };
            let n = l0.grace_lots;
            self.lots
                .insert((ws.to_string(), a.grant_id.clone(), n), lot);
            out.push(Allocation {
                grant_id: a.grant_id,
                lot: n,
                credits: a.credits,
                spendable_until_ms: Some(grace_until),
            });
        }
        out
    }

    /// Close `keys` as `kind`; the transaction when they held anything.
    fn close(
        &mut self,
        now: u64,
        ws: &str,
        keys: &[LotKey],
        kind: TxnKind,
        key: Option<&str>,
        memo: Option<&str>,
    ) -> Option<u64> {
        let total: u64 = keys.iter().map(|k| self.lots[k].remaining).sum();
        let mut txn = 0;
        if total > 0 {
            let w = self.ws.get_mut(ws).unwrap();
            let before = w.balance;
            w.balance -= total;
            w.txns += 1;
            if kind == TxnKind::Expiration {
                w.expired += total;
            } else {
                w.voided += total;
            }
            let after = w.balance;
            txn = self.append(
                now,
                TxnModel {
                    at: now,
                    ws: ws.to_string(),
                    kind,
                    amount: total,
                    debit: true,
                    before,
                    after,
                    memo: memo.map(str::to_string),
                    refund: None,
                    gen: None,
                },
            );
            let entries = keys
                .iter()
                .filter(|k| self.lots[*k].remaining > 0)
                .map(|k| Allocation {
                    grant_id: k.1.clone(),
                    lot: k.2,
                    credits: self.lots[k].remaining,
                    spendable_until_ms: self.lots[k].expires,
                })
                .collect();
            self.allocs.insert(txn, entries);
            if let Some(key) = key {
                self.idem.insert(key.to_string(), txn);
            }
        }
        for k in keys {
            let l = self.lots.get_mut(k).unwrap();
            l.closed = Some((kind, txn, l.remaining));
            l.remaining = 0;
        }
        (txn > 0).then_some(txn)
    }

    fn closure(&self, txn: u64, grant: &str, replay: bool) -> GrantClosure {
        let t = self.txn(txn);
        GrantClosure {
            txn_id: txn,
            workspace: t.ws.clone(),
            grant_id: grant.to_string(),
            kind: t.kind,
            amount_credits: t.amount,
            balance_before_credits: t.before,
            balance_after_credits: t.after,
            at_ms: t.at,
            replay,
        }
    }

    fn void(&mut self, now: u64, v: &VoidGrant) -> Result<GrantClosure, Error> {
        check_text("memo", &v.memo, MAX_MEMO_BYTES, false)?;
        if let Some(&id) = self.idem.get(&v.idempotency_key) {
            let t = self.txn(id).clone();
            let voided = self
                .allocs
                .get(&id)
                .and_then(|a| a.first().map(|e| e.grant_id.clone()))
                .unwrap_or_default();
            let conflict = |field, existing: String, requested: String| Error::Conflict {
                entity: "idempotency key",
                id: v.idempotency_key.clone(),
                field,
                existing,
                requested,
            };
            if t.kind != TxnKind::Void {
                return Err(conflict("kind", t.kind.to_string(), "Void".into()));
            }
            if t.ws != v.workspace {
                return Err(conflict("workspace", t.ws.clone(), v.workspace.clone()));
            }
            if voided != v.grant_id {
                return Err(conflict("grant", voided, v.grant_id.clone()));
            }
            let memo = t.memo.clone().unwrap_or_default();
            if memo != v.memo {
                return Err(conflict(
                    "memo",
                    format!("{memo:?}"),
                    format!("{:?}", v.memo),
                ));
            }
            return Ok(self.closure(id, &v.grant_id, true));
        }
        let k0 = (v.workspace.clone(), v.grant_id.clone(), 0);
        let Some(l0) = self.lots.get(&k0) else {
            return Err(Error::UnknownGrant {
                grant: v.grant_id.clone(),
            });
        };
        let open = |l: &LotModel| l.closed.is_none() && l.expires.is_none_or(|e| now < e);
        let keys: Vec<LotKey> = (0..=l0.grace_lots)
            .map(|n| (v.workspace.clone(), v.grant_id.clone(), n))
            .filter(|k| open(&self.lots[k]))
            .collect();
        let with_credits = keys.iter().filter(|k| self.lots[*k].remaining > 0).count();
        if with_credits > credit_ledger::limits::MAX_LOTS_PER_TRANSACTION {
            return Err(Error::TooManyLots {
                workspace: v.workspace.clone(),
                max_lots: credit_ledger::limits::MAX_LOTS_PER_TRANSACTION,
            });
        }
        if keys.iter().all(|k| self.lots[k].remaining == 0) {
            return Err(Error::NothingToVoid {
                grant: v.grant_id.clone(),
            });
        }
        self.trust_clock()?;
        let txn = self
            .close(
                now,
                &v.workspace,
                &keys,
                TxnKind::Void,
                Some(&v.idempotency_key),
                Some(&v.memo),
            )
            .unwrap();
        Ok(self.closure(txn, &v.grant_id, false))
    }

    fn grant_views(&self, ws: &str) -> Vec<GrantView> {
        let now = self.clock.max(self.last_at);
        let mut v: Vec<_> = self
            .lots
            .iter()
            .filter(|((w, _, _), _)| w == ws)
            .map(|((w, id, lot), l)| {
                let state = match l.closed {
                    Some((TxnKind::Void, txn, credits)) => GrantState::Voided { txn, credits },
                    Some((_, txn, credits)) => GrantState::Expired { txn, credits },
                    None if l.expires.is_some_and(|e| now >= e) => GrantState::ExpiredUnswept,
                    None if l.effective.is_some_and(|e| now < e) => GrantState::Pending,
                    None if l.remaining == 0 => GrantState::Spent,
                    None => GrantState::Spendable,
                };
                (
                    l.order(id, *lot),
                    GrantView {
                        grant_id: id.clone(),
                        lot: *lot,
                        workspace: w.clone(),
                        label: l.label.clone(),
                        priority: l.priority,
                        effective_at_ms: l.effective,
                        expires_at_ms: l.expires,
                        amount_credits: l.amount,
                        remaining_credits: l.remaining,
                        allocated_credits: l.allocated,
                        returned_credits: l.returned,
                        source_txn: l.source_txn,
                        state,
                    },
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, g)| g).collect()
    }

    fn txn(&self, id: u64) -> &TxnModel {
        &self.txns[(id - 1) as usize]
    }

    /// Append `t`; when it takes the balance from at or above the workspace's alert threshold
    /// to below it, append a `BalanceLow` notification right after it. Returns `t`'s id.
    fn append(&mut self, now: u64, t: TxnModel) -> u64 {
        debug_assert_eq!(t.at, now);
        let notification = self.alerts.get(&t.ws).and_then(|&th| {
            (t.before >= th && t.after < th).then(|| TxnModel {
                at: now,
                ws: t.ws.clone(),
                kind: TxnKind::BalanceLow,
                amount: 0,
                debit: false,
                before: t.after,
                after: t.after,
                memo: None,
                refund: None,
                gen: t.gen.clone(),
            })
        });
        self.txns.push(t);
        let id = self.txns.len() as u64;
        if let Some(n) = notification {
            self.ws.get_mut(&n.ws).expect("a notified workspace").txns += 1;
            self.txns.push(n);
        }
        self.last_at = now;
        id
    }

    fn ack(&mut self, consumer: &str, txn_id: u64) -> Result<AckReceipt, Error> {
        check_text("consumer", consumer, 128, false)?;
        let last = self.txns.len() as u64;
        if txn_id > last {
            return Err(Error::AckBeyondEnd {
                consumer: consumer.to_string(),
                txn_id,
                last_txn_id: last,
            });
        }
        let previous = self.consumers.get(consumer).copied().unwrap_or(0);
        if txn_id < previous {
            return Err(Error::AckBackwards {
                consumer: consumer.to_string(),
                txn_id,
                position_txn_id: previous,
            });
        }
        if txn_id > previous {
            self.consumers.insert(consumer.to_string(), txn_id);
        }
        Ok(AckReceipt {
            consumer: consumer.to_string(),
            txn_id,
            replay: txn_id == previous,
        })
    }

    fn set_alert(&mut self, ws: &str, threshold: Option<u64>) -> Result<AlertReceipt, Error> {
        if let Some(t) = threshold {
            check_amount("alert threshold", u128::from(t))?;
        }
        if !self.ws.contains_key(ws) {
            return Err(Error::UnknownWorkspace {
                workspace: ws.to_string(),
            });
        }
        let previous = self.alerts.get(ws).copied();
        match threshold {
            Some(t) => self.alerts.insert(ws.to_string(), t),
            None => self.alerts.remove(ws),
        };
        Ok(AlertReceipt {
            workspace: ws.to_string(),
            threshold_credits: threshold,
            replay: previous == threshold,
        })
    }

    fn receipt(&self, id: u64, replay: bool) -> Receipt {
        let t = self.txn(id);
        Receipt {
            txn_id: id,
            workspace: t.ws.clone(),
            kind: t.kind,
            amount_credits: t.signed() as i64,
            balance_before_credits: t.before,
            balance_after_credits: t.after,
            at_ms: t.at,
            replay,
        }
    }

    /// Credit and Adjust share this path, like the engine.
    #[allow(clippy::too_many_arguments)]
    fn movement(
        &mut self,
        now: u64,
        ws: &str,
        kind: TxnKind,
        amount: u64,
        debit: bool,
        key: &str,
        memo: &str,
        terms: Option<&Credit>,
    ) -> Result<Receipt, Error> {
        let signed = if debit {
            -i128::from(amount)
        } else {
            i128::from(amount)
        };
        if let Some(&id) = self.idem.get(key) {
            let t = self.txn(id);
            let stored_memo = t.memo.clone().unwrap_or_default();
            let differs = if t.kind != kind {
                Some(("kind", t.kind.to_string(), kind.to_string()))
            } else if t.ws != ws {
                Some(("workspace", t.ws.clone(), ws.to_string()))
            } else if t.signed() != signed {
                Some(("amount", t.signed().to_string(), signed.to_string()))
            } else if stored_memo != memo {
                Some(("memo", format!("{stored_memo:?}"), format!("{memo:?}")))
            } else {
                let show =
                    |t: Option<u64>| t.map_or_else(|| "none".to_string(), |t| format!("{t} ms"));
                match (terms, self.lots.get(&(ws.to_string(), key.to_string(), 0))) {
                    (Some(c), Some(l)) if l.priority != c.priority => {
                        Some(("priority", l.priority.to_string(), c.priority.to_string()))
                    }
                    (Some(c), Some(l)) if l.expires != c.expires_at_ms => {
                        Some(("expires_at_ms", show(l.expires), show(c.expires_at_ms)))
                    }
                    (Some(c), Some(l)) if l.effective != c.effective_at_ms => Some((
                        "effective_at_ms",
                        show(l.effective),
                        show(c.effective_at_ms),
                    )),
                    _ => None,
                }
            };
            if let Some((field, existing, requested)) = differs {
                return Err(Error::Conflict {
                    entity: "idempotency key",
                    id: key.to_string(),
                    field,
                    existing,
                    requested,
                });
            }
            return Ok(self.receipt(id, true));
        }
        if let Some(expires_at_ms) = terms.and_then(|t| t.expires_at_ms) {
            if expires_at_ms <= now {
                return Err(InvalidInput::ExpiryInPast {
                    expires_at_ms,
                    now_ms: now,
                }
                .into());
            }
        }
        let mut w = match self.ws.get(ws) {
            Some(w) => w.clone(),
            None if kind == TxnKind::Adjustment => {
                return Err(Error::UnknownWorkspace {
                    workspace: ws.to_string(),
                })
            }
            None => WsModel {
                created_at: now,
                ..WsModel::default()
            },
        };
        let before = w.balance;
        let mut plan = None;
        if debit {
            plan = Some(self.plan(ws, now, amount)?);
            w.balance = before - amount;
            w.adj_out = w
                .adj_out
                .checked_add(amount)
                .ok_or_else(|| overflow(ws, "the adjusted-out total"))?;
        } else {
            w.balance = before
                .checked_add(amount)
                .ok_or_else(|| overflow(ws, "the balance"))?;
            // Room must remain to refund every running generation.
            w.balance.checked_add(w.held).ok_or_else(|| {
                overflow(
                    ws,
                    "the balance plus the credits held by running generations",
                )
            })?;
            let total = if kind == TxnKind::Adjustment {
                &mut w.adj_in
            } else {
                &mut w.granted
            };
            *total = total
                .checked_add(amount)
                .ok_or_else(|| overflow(ws, "the credited total"))?;
        }
        w.txns += 1;
        self.trust_clock()?;
        let after = w.balance;
        self.ws.insert(ws.to_string(), w);
        let id = self.append(
            now,
            TxnModel {
                at: now,
                ws: ws.to_string(),
                kind,
                amount,
                debit,
                before,
                after,
                memo: Some(memo.to_string()),
                refund: None,
                gen: None,
            },
        );
        match plan {
            Some(plan) => {
                let a = self.take(plan);
                self.allocs.insert(id, a);
            }
            None => {
                let (priority, effective, expires) = terms
                    .map_or((DEFAULT_GRANT_PRIORITY, None, None), |t| {
                        (t.priority, t.effective_at_ms, t.expires_at_ms)
                    });
                let label = if memo.is_empty() {
                    kind.to_string()
                } else {
                    memo.to_string()
                };
                self.lots.insert(
                    (ws.to_string(), key.to_string(), 0),
                    LotModel {
                        label,
                        priority,
                        effective,
                        expires,
                        amount,
                        remaining: amount,
                        allocated: 0,
                        returned: 0,
                        source_txn: id,
                        grace_lots: 0,
                        closed: None,
                    },
                );
                // The notice: at once when it is already due, else when the sweep gets to it.
                if let (Some(window), Some(exp)) = (self.notice_ms, expires) {
                    let due = exp.saturating_sub(window).max(effective.unwrap_or(0));
                    if due <= now {
                        self.write_notice(now, ws, key);
                    } else {
                        self.notices
                            .insert((due, ws.to_string(), key.to_string()), exp);
                    }
                }
            }
        }
        self.idem.insert(key.to_string(), id);
        Ok(self.receipt(id, false))
    }

    fn charge(&self, id: &str, replay: bool) -> Charge {
        let g = &self.gens[id];
        let u = self.txn(g.usage_txn);
        Charge {
            generation_id: id.to_string(),
            workspace: g.ws.clone(),
            usage_txn: g.usage_txn,
            cost_credits: g.cost,
            balance_before_credits: u.before,
            balance_after_credits: u.after,
            started_at_ms: g.started,
            deadline_ms: g.deadline,
            allocations: self.allocs[&g.usage_txn].clone(),
            replay,
        }
    }

    fn start(&mut self, now: u64, s: &StartGeneration) -> Result<Charge, Error> {
        check_text("feature", &s.feature, 128, false)?;
        check_amount("cost", u128::from(s.cost_credits))?;
        if let Some(t) = s.timeout_ms {
            if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t) {
                return Err(InvalidInput::TimeoutOutOfRange {
                    timeout_ms: t,
                    min_ms: MIN_TIMEOUT_MS,
                    max_ms: MAX_TIMEOUT_MS,
                }
                .into());
            }
        }
        if let Some(g) = self.gens.get(&s.generation_id) {
            if g.state == GenModelState::Running && now >= g.deadline {
                let message = format!(
                    "start repeated at {now} ms, after the deadline at {} ms",
                    g.deadline
                );
                let r = self.refund(now, &s.generation_id, RefundReason::Timeout, &message)?;
                return Err(Error::GenerationRefunded {
                    generation: s.generation_id.clone(),
                    reason: r.reason,
                    refund_txn: r.refund_txn,
                    refunded_now: Some(Box::new(r)),
                });
            }
            let differs = if g.ws != s.workspace {
                Some(("workspace", g.ws.clone(), s.workspace.clone()))
            } else if g.feature != s.feature {
                Some(("feature", g.feature.clone(), s.feature.clone()))
            } else if g.cost != s.cost_credits {
                Some(("cost", g.cost.to_string(), s.cost_credits.to_string()))
            } else {
                s.timeout_ms
                    .filter(|t| *t != g.timeout)
                    .map(|t| ("timeout_ms", g.timeout.to_string(), t.to_string()))
            };
            if let Some((field, existing, requested)) = differs {
                return Err(Error::Conflict {
                    entity: "generation",
                    id: s.generation_id.clone(),
                    field,
                    existing,
                    requested,
                });
            }
            return Ok(self.charge(&s.generation_id, true));
        }
        let mut w = self
            .ws
            .get(&s.workspace)
            .cloned()
            .ok_or_else(|| Error::UnknownWorkspace {
                workspace: s.workspace.clone(),
            })?;
        let before = w.balance;
        let plan = self.plan(&s.workspace, now, s.cost_credits)?;
        w.balance = before - s.cost_credits;
        w.spent = w
            .spent
            .checked_add(s.cost_credits)
            .ok_or_else(|| overflow(&s.workspace, "the spent total"))?;
        w.running += 1;
        w.held = w
            .held
            .checked_add(s.cost_credits)
            .ok_or_else(|| overflow(&s.workspace, "the held credits"))?;
        w.txns += 1;
        let timeout = s.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        let deadline = now + timeout;
        self.trust_clock()?;
        let after = w.balance;
        self.ws.insert(s.workspace.clone(), w);
        let usage_txn = self.append(
            now,
            TxnModel {
                at: now,
                ws: s.workspace.clone(),
                kind: TxnKind::Usage,
                amount: s.cost_credits,
                debit: true,
                before,
                after,
                memo: None,
                refund: None,
                gen: Some(s.generation_id.clone()),
            },
        );
        let a = self.take(plan);
        self.allocs.insert(usage_txn, a);
        self.gens.insert(
            s.generation_id.clone(),
            GenModel {
                ws: s.workspace.clone(),
                feature: s.feature.clone(),
                cost: s.cost_credits,
                timeout,
                started: now,
                deadline,
                usage_txn,
                state: GenModelState::Running,
            },
        );
        Ok(self.charge(&s.generation_id, false))
    }

    fn refund_receipt(&self, id: &str, refund_txn: u64, replay: bool) -> RefundReceipt {
        let g = &self.gens[id];
        let t = self.txn(refund_txn);
        let (reason, message) = t.refund.clone().expect("a refund transaction");
        RefundReceipt {
            generation_id: id.to_string(),
            workspace: g.ws.clone(),
            usage_txn: g.usage_txn,
            refund_txn,
            amount_credits: t.amount,
            reason,
            message,
            balance_before_credits: t.before,
            balance_after_credits: t.after,
            at_ms: t.at,
            allocations: self.allocs[&refund_txn].clone(),
            replay,
        }
    }

    /// The one refund path: fail, lazy expiry and the sweep.
    fn refund(
        &mut self,
        now: u64,
        id: &str,
        reason: RefundReason,
        message: &str,
    ) -> Result<RefundReceipt, Error> {
        let g = self.gens[id].clone();
        assert_eq!(g.state, GenModelState::Running);
        let mut w = self.ws[&g.ws].clone();
        let before = w.balance;
        w.balance = before
            .checked_add(g.cost)
            .ok_or_else(|| overflow(&g.ws, "the balance"))?;
        w.refunded = w
            .refunded
            .checked_add(g.cost)
            .ok_or_else(|| overflow(&g.ws, "the refunded total"))?;
        w.running -= 1;
        w.held -= g.cost;
        w.txns += 1;
        let after = w.balance;
        self.ws.insert(g.ws.clone(), w);
        let next = self.txns.len() as u64 + 1;
        // The grace of a timeout counts from its deadline.
        let base = if reason == RefundReason::Timeout {
            g.deadline.min(now)
        } else {
            now
        };
        let back = self.give_back(base, &g.ws, g.usage_txn, next);
        self.allocs.insert(next, back);
        let refund_txn = self.append(
            now,
            TxnModel {
                at: now,
                ws: g.ws.clone(),
                kind: TxnKind::Refund,
                amount: g.cost,
                debit: false,
                before,
                after,
                memo: None,
                refund: Some((reason, truncate(message))),
                gen: Some(id.to_string()),
            },
        );
        self.gens.get_mut(id).unwrap().state = GenModelState::Refunded {
            at: now,
            reason,
            refund_txn,
        };
        Ok(self.refund_receipt(id, refund_txn, false))
    }

    fn complete(&mut self, now: u64, id: &str) -> Result<Completion, Error> {
        let g = self
            .gens
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownGeneration {
                generation: id.to_string(),
            })?;
        match g.state {
            GenModelState::Succeeded { at } => Ok(Completion {
                generation_id: id.to_string(),
                usage_txn: g.usage_txn,
                completed_at_ms: at,
                replay: true,
            }),
            GenModelState::Refunded {
                reason, refund_txn, ..
            } => Err(Error::GenerationRefunded {
                generation: id.to_string(),
                reason,
                refund_txn,
                refunded_now: None,
            }),
            GenModelState::Running if now >= g.deadline => {
                let message = format!(
                    "completion reported at {now} ms, after the deadline at {} ms",
                    g.deadline
                );
                let r = self.refund(now, id, RefundReason::Timeout, &message)?;
                Err(Error::GenerationRefunded {
                    generation: id.to_string(),
                    reason: r.reason,
                    refund_txn: r.refund_txn,
                    refunded_now: Some(Box::new(r)),
                })
            }
            GenModelState::Running => {
                self.trust_clock()?;
                let w = self.ws.get_mut(&g.ws).unwrap();
                w.running -= 1;
                w.held -= g.cost;
                self.gens.get_mut(id).unwrap().state = GenModelState::Succeeded { at: now };
                Ok(Completion {
                    generation_id: id.to_string(),
                    usage_txn: g.usage_txn,
                    completed_at_ms: now,
                    replay: false,
                })
            }
        }
    }

    fn fail(
        &mut self,
        now: u64,
        id: &str,
        reason: RefundReason,
        message: &str,
    ) -> Result<RefundReceipt, Error> {
        if reason == RefundReason::Timeout {
            return Err(InvalidInput::ReservedReason.into());
        }
        let g = self
            .gens
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownGeneration {
                generation: id.to_string(),
            })?;
        match g.state {
            GenModelState::Refunded { refund_txn, .. } => {
                Ok(self.refund_receipt(id, refund_txn, true))
            }
            GenModelState::Succeeded { at } => Err(Error::GenerationSucceeded {
                generation: id.to_string(),
                completed_at_ms: at,
            }),
            GenModelState::Running if now >= g.deadline => {
                let late = format!(
                    "deadline at {} ms passed before the failure was reported ({}: {message})",
                    g.deadline,
                    reason.as_str()
                );
                self.refund(now, id, RefundReason::Timeout, &late)
            }
            GenModelState::Running => self.refund(now, id, reason, message),
        }
    }

    /// The sweep, modelled as all-or-nothing: a refund that cannot be written fails the sweep
    /// and leaves every generation as it was.
    fn sweep(&mut self, now: u64, limit: u32) -> Result<SweepReport, Error> {
        if limit == 0 || limit > MAX_SWEEP_LIMIT {
            return Err(InvalidInput::LimitOutOfRange {
                field: "sweep limit",
                value: u64::from(limit),
                max: u64::from(MAX_SWEEP_LIMIT),
            }
            .into());
        }
        let mut due: Vec<(u64, String)> = self
            .gens
            .iter()
            .filter(|(_, g)| g.state == GenModelState::Running && g.deadline <= now)
            .map(|(id, g)| (g.deadline, id.clone()))
            .collect();
        due.sort();
        let more_expired = due.len() > limit as usize;
        due.truncate(limit as usize);
        let saved = self.clone();
        let mut refunds = Vec::new();
        let budget = limit as usize - due.len();
        for (_, id) in due {
            let timeout = self.gens[&id].timeout;
            let message = format!(
                "generation ran past its {} timeout",
                format_duration_ms(timeout)
            );
            match self.refund(now, &id, RefundReason::Timeout, &message) {
                Ok(r) => refunds.push(r),
                Err(e) => {
                    *self = saved;
                    return Err(e);
                }
            }
        }
        // With an untrusted clock only refunds go ahead; notices and expirations wait.
        let trusted = self.refusal.is_none();
        let mut more_expired = more_expired;
        let mut budget = budget;
        let mut notices = Vec::new();
        if trusted && (budget > 0 || !more_expired) {
            let mut due: Vec<(u64, String, String)> = self
                .notices
                .keys()
                .filter(|k| k.0 <= now)
                .cloned()
                .collect();
            if due.len() > budget {
                more_expired = true;
                due.truncate(budget);
            }
            budget -= due.len();
            for k in due {
                self.notices.remove(&k);
                let l = &self.lots[&(k.1.clone(), k.2.clone(), 0)];
                if l.remaining > 0 && l.spendable(now) {
                    notices.push(self.write_notice(now, &k.1, &k.2));
                }
            }
        }
        let mut lapsed: Vec<(u64, LotKey)> = self
            .lots
            .iter()
            .filter(|_| trusted)
            .filter(|(_, l)| l.closed.is_none() && l.expires.is_some_and(|e| e <= now))
            .map(|(k, l)| (l.expires.unwrap(), k.clone()))
            .collect();
        lapsed.sort();
        if !more_expired && lapsed.len() > budget {
            more_expired = true;
        }
        lapsed.truncate(budget);
        let mut expirations = Vec::new();
        for (_, k) in lapsed {
            if let Some(txn) = self.close(
                now,
                &k.0,
                std::slice::from_ref(&k),
                TxnKind::Expiration,
                None,
                None,
            ) {
                expirations.push(self.closure(txn, &k.1, false));
            }
        }
        Ok(SweepReport {
            refunds,
            notices,
            expirations,
            more_expired,
            next_deadline_ms: self.earliest_deadline(),
        })
    }

    /// One operation inside a write transaction stamped `now`.
    fn apply_op(&mut self, now: u64, op: &Op) -> Result<Outcome, Error> {
        match op {
            Op::Credit(c) => {
                check_amount("amount", u128::from(c.amount_credits))?;
                check_text("memo", &c.memo, MAX_MEMO_BYTES, true)?;
                if c.priority > MAX_GRANT_PRIORITY {
                    return Err(InvalidInput::PriorityOutOfRange {
                        priority: c.priority,
                        max: MAX_GRANT_PRIORITY,
                    }
                    .into());
                }
                if let (Some(effective_at_ms), Some(expires_at_ms)) =
                    (c.effective_at_ms, c.expires_at_ms)
                {
                    if expires_at_ms <= effective_at_ms {
                        return Err(InvalidInput::ExpiryNotAfterStart {
                            effective_at_ms,
                            expires_at_ms,
                        }
                        .into());
                    }
                }
                self.movement(
                    now,
                    &c.workspace,
                    c.kind.txn_kind(),
                    c.amount_credits,
                    false,
                    &c.idempotency_key,
                    &c.memo,
                    Some(c),
                )
                .map(Outcome::Credit)
            }
            Op::Adjust(a) => {
                check_amount("amount", u128::from(a.amount_credits.unsigned_abs()))?;
                check_text("memo", &a.memo, MAX_MEMO_BYTES, false)?;
                self.movement(
                    now,
                    &a.workspace,
                    TxnKind::Adjustment,
                    a.amount_credits.unsigned_abs(),
                    a.amount_credits < 0,
                    &a.idempotency_key,
                    &a.memo,
                    None,
                )
                .map(Outcome::Adjust)
            }
            Op::Start(s) => self.start(now, s).map(Outcome::Start),
            Op::Complete { generation_id } => {
                self.complete(now, generation_id).map(Outcome::Complete)
            }
            Op::Fail {
                generation_id,
                reason,
                message,
            } => self
                .fail(now, generation_id, *reason, message)
                .map(Outcome::Fail),
            Op::Sweep { limit } => self.sweep(now, *limit).map(Outcome::Sweep),
            Op::VoidGrant(v) => self.void(now, v).map(Outcome::VoidGrant),
            Op::Ack { consumer, txn_id } => self.ack(consumer, *txn_id).map(Outcome::Ack),
            Op::SetAlert {
                workspace,
                threshold_credits,
            } => self
                .set_alert(workspace, *threshold_credits)
                .map(Outcome::Alert),
        }
    }

    /// A write transaction holding `ops`.
    fn apply_batch(&mut self, ops: &[Op]) -> Vec<Result<Outcome, Error>> {
        let (now, refusal) = self.effective_now();
        self.refusal = refusal;
        let results = ops.iter().map(|op| self.apply_op(now, op)).collect();
        self.refusal = None;
        results
    }

    /// `Ledger::sweep_expired`, with its in-memory idle check.
    fn sweep_expired(&mut self, limit: u32) -> Result<SweepReport, Error> {
        if limit == 0 || limit > MAX_SWEEP_LIMIT {
            return self.sweep(0, limit);
        }
        let earliest = self.earliest_deadline();
        if self.clock.max(self.last_at) < earliest.unwrap_or(u64::MAX) {
            return Ok(SweepReport {
                refunds: Vec::new(),
                notices: Vec::new(),
                expirations: Vec::new(),
                more_expired: false,
                next_deadline_ms: earliest,
            });
        }
        self.apply_batch(&[Op::Sweep { limit }])
            .remove(0)
            .map(|o| match o {
                Outcome::Sweep(r) => r,
                other => unreachable!("{other:?}"),
            })
    }

    /// The catch-up sweep that `open` runs; an error fails the open. A refund is never refused
    /// because of the clock, so a clock too far behind the log sweeps too, at the log's time.
    fn open_sweep(&mut self) -> Result<(), Error> {
        loop {
            match self.sweep_expired(MAX_SWEEP_LIMIT) {
                Ok(r) if r.more_expired => continue,
                Ok(_) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn summary(&self, id: &str, w: &WsModel) -> WorkspaceSummary {
        let now = self.clock.max(self.last_at);
        let (mut spendable, mut pending, mut unswept) = (0, 0, 0);
        let mut next_expiry: Option<ExpiryNotice> = None;
        for ((ws, _, _), l) in &self.lots {
            if ws != id || l.closed.is_some() || l.remaining == 0 {
                continue;
            }
            if l.expires.is_some_and(|e| now >= e) {
                unswept += l.remaining;
            } else if l.effective.is_some_and(|e| now < e) {
                pending += l.remaining;
            } else {
                spendable += l.remaining;
                if let Some(at_ms) = l.expires {
                    match &mut next_expiry {
                        Some(n) if n.at_ms == at_ms => n.credits += l.remaining,
                        Some(n) if n.at_ms < at_ms => {}
                        n => {
                            *n = Some(ExpiryNotice {
                                at_ms,
                                credits: l.remaining,
                            })
                        }
                    }
                }
            }
        }
        WorkspaceSummary {
            workspace: id.to_string(),
            balance_credits: w.balance,
            spendable_credits: spendable,
            pending_credits: pending,
            expired_unswept_credits: unswept,
            next_expiry,
            expired_credits: w.expired,
            voided_credits: w.voided,
            granted_credits: w.granted,
            spent_credits: w.spent,
            refunded_credits: w.refunded,
            adjusted_in_credits: w.adj_in,
            adjusted_out_credits: w.adj_out,
            running_generations: w.running,
            held_credits: w.held,
            transactions: w.txns,
            created_at_ms: w.created_at,
        }
    }

    fn view(&self, id: &str, g: &GenModel) -> GenerationView {
        let now = self.clock.max(self.last_at);
        GenerationView {
            generation_id: id.to_string(),
            workspace: g.ws.clone(),
            feature: g.feature.clone(),
            cost_credits: g.cost,
            timeout_ms: g.timeout,
            started_at_ms: g.started,
            deadline_ms: g.deadline,
            usage_txn: g.usage_txn,
            state: match g.state {
                GenModelState::Running => GenerationState::Running,
                GenModelState::Succeeded { at } => GenerationState::Succeeded {
                    completed_at_ms: at,
                },
                GenModelState::Refunded {
                    at,
                    reason,
                    refund_txn,
                } => GenerationState::Refunded {
                    refunded_at_ms: at,
                    reason,
                    refund_txn,
                },
            },
            overdue: g.state == GenModelState::Running && now >= g.deadline,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running a test case.

/// What one run did.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    /// Steps run.
    pub steps: u64,
    /// Operations run (a batch counts each of its operations).
    pub ops: u64,
    /// Operations that returned `Ok`.
    pub ok: u64,
    /// Operations that returned an error (each one matched the model's).
    pub errors: u64,
    /// Drops and reopens, of which crashes.
    pub reopens: u64,
    /// Reopens that rolled back to the durable image.
    pub crashes: u64,
    /// Refunds written (any path).
    pub refunds: u64,
    /// Expirations and Voids written.
    pub closures: u64,
    /// `verify()` runs, all clean.
    pub verifies: u64,
    /// Separation branches tried (journal deleted, swapped, flipped, or bypassed).
    pub separations: u64,
    /// Of those, opens that refused with a typed error (the others lost nothing).
    pub refusals: u64,
    /// Consumer acks that moved a position.
    pub acks: u64,
    /// `BalanceLow` notifications in the final log.
    pub notifications: u64,
    /// `GrantExpiring` notices in the final log, and of those the ones the sweep wrote.
    pub grant_notices: u64,
    pub swept_grant_notices: u64,
    /// The errors returned (each matched by the model), by kind.
    pub error_kinds: BTreeMap<&'static str, u64>,
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidInput(_) => "InvalidInput",
        Error::UnknownWorkspace { .. } => "UnknownWorkspace",
        Error::UnknownGeneration { .. } => "UnknownGeneration",
        Error::InsufficientCredits { .. } => "InsufficientCredits",
        Error::Overflow { .. } => "Overflow",
        Error::Conflict { .. } => "Conflict",
        Error::GenerationRefunded { .. } => "GenerationRefunded",
        Error::GenerationSucceeded { .. } => "GenerationSucceeded",
        Error::ClockRegressed { .. } => "ClockRegressed",
        Error::UnknownGrant { .. } => "UnknownGrant",
        Error::NothingToVoid { .. } => "NothingToVoid",
        Error::TooManyLots { .. } => "TooManyLots",
        Error::AckBeyondEnd { .. } => "AckBeyondEnd",
        Error::AckBackwards { .. } => "AckBackwards",
        _ => "other",
    }
}

impl RunStats {
    /// Add another run's counts.
    pub fn add(&mut self, o: &RunStats) {
        self.steps += o.steps;
        self.ops += o.ops;
        self.ok += o.ok;
        self.errors += o.errors;
        self.reopens += o.reopens;
        self.crashes += o.crashes;
        self.refunds += o.refunds;
        self.closures += o.closures;
        self.verifies += o.verifies;
        self.separations += o.separations;
        self.refusals += o.refusals;
        self.acks += o.acks;
        self.notifications += o.notifications;
        self.grant_notices += o.grant_notices;
        self.swept_grant_notices += o.swept_grant_notices;
        for (k, v) in &o.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
    }
}

/// Where the harness's ledger lives.
enum Storage {
    /// The in-memory image backend (no journal).
    Image {
        image: Arc<Mutex<Image>>,
        dead: Arc<AtomicBool>,
    },
    /// Files in a scratch folder, with the journal; each crash moves on to a copy.
    Files {
        dir: tempfile::TempDir,
        path: std::path::PathBuf,
        copies: u32,
    },
}

/// A scratch folder, in memory when the system has one (fsync is then free), so that the
/// journal mode runs about as many steps as the image mode.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temporary folder")
}

struct Harness {
    clock: ManualClock,
    storage: Storage,
    ledger: Option<Ledger>,
    model: Model,
    stats: RunStats,
}

fn options(clock: &ManualClock) -> Options {
    // The clock is the wall clock too: the model's clock jumps are not typing mistakes.
    Options::default()
        .clock(clock.clone())
        .wall_clock(clock.clone())
        .grant_expiring_notice_ms(Some(NOTICE_MS))
}

impl Harness {
    fn new() -> Self {
        let clock = ManualClock::new(START_MS);
        let image = Arc::new(Mutex::new(Image::default()));
        let dead = Arc::new(AtomicBool::new(false));
        let backend = ImageBackend {
            image: image.clone(),
            dead: dead.clone(),
        };
        let ledger = Ledger::open_backend(backend, options(&clock)).expect("create a new ledger");
        Harness {
            clock,
            storage: Storage::Image { image, dead },
            ledger: Some(ledger),
            model: Model::new(START_MS),
            stats: RunStats::default(),
        }
    }

    fn new_journal() -> Self {
        let clock = ManualClock::new(START_MS);
        let dir = scratch_dir();
        let path = dir.path().join("ledger-0.redb");
        let ledger = Ledger::open_with(&path, options(&clock)).expect("create a new ledger");
        Harness {
            clock,
            storage: Storage::Files {
                dir,
                path,
                copies: 0,
            },
            ledger: Some(ledger),
            model: Model::new(START_MS),
            stats: RunStats::default(),
        }
    }

    fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().expect("the ledger is open")
    }

    fn set_clock(&mut self, t: u64) {
        self.model.clock = t;
        self.clock.set_ms(t);
    }

    fn tally(&mut self, r: &Result<Outcome, Error>) {
        self.stats.ops += 1;
        match r {
            Ok(Outcome::Fail(f)) if !f.replay => self.stats.refunds += 1,
            Ok(Outcome::Sweep(s)) => {
                self.stats.refunds += s.refunds.len() as u64;
                self.stats.closures += s.expirations.len() as u64;
                self.stats.swept_grant_notices += s.notices.len() as u64;
            }
            Ok(Outcome::VoidGrant(v)) if !v.replay => self.stats.closures += 1,
            Ok(Outcome::Ack(a)) if !a.replay => self.stats.acks += 1,
            _ => {}
        }
        match r {
            Ok(_) => self.stats.ok += 1,
            Err(e) => {
                self.stats.errors += 1;
                *self.stats.error_kinds.entry(error_kind(e)).or_default() += 1;
            }
        }
    }

    fn reopen(&mut self, crash: bool, step: usize) {
        let reopen: Box<dyn FnOnce() -> Result<Ledger, Error>> = match &mut self.storage {
            Storage::Image { image, dead } => {
                if crash {
                    // The process dies: nothing it does from now on reaches the image.
                    dead.store(true, Ordering::SeqCst);
                }
                drop(self.ledger.take());
                if crash {
                    let mut img = image.lock().unwrap();
                    let Image {
                        live,
                        durable,
                        dirty,
                    } = &mut *img;
                    live.clone_from(durable);
                    dirty.clear();
                    self.stats.crashes += 1;
                }
                *dead = Arc::new(AtomicBool::new(false));
                let backend = ImageBackend {
                    image: image.clone(),
                    dead: dead.clone(),
                };
                let options = options(&self.clock);
                Box::new(move || Ledger::open_backend(backend, options))
            }
            Storage::Files { dir, path, copies } => {
                if crash {
                    // What `kill -9` leaves: the files as they are now, before any close.
                    *copies += 1;
                    let copy = dir.path().join(format!("ledger-{copies}.redb"));
                    std::fs::copy(&*path, &copy).expect("copy the ledger file");
                    if Ledger::journal_path(&*path).exists() {
                        std::fs::copy(Ledger::journal_path(&*path), Ledger::journal_path(&copy))
                            .expect("copy the journal");
                    }
                    drop(self.ledger.take());
                    let _ = std::fs::remove_file(&*path);
                    let _ = std::fs::remove_file(Ledger::journal_path(&*path));
                    *path = copy;
                    self.stats.crashes += 1;
                } else {
                    drop(self.ledger.take());
                }
                let (path, options) = (path.clone(), options(&self.clock));
                Box::new(move || Ledger::open_with(path, options))
            }
        };
        self.stats.reopens += 1;
        // Opening runs the catch-up sweep: the model runs it too.
        let mut expected = self.model.clone();
        let want = expected.open_sweep();
        let got = reopen();
        match (got, want) {
            (Ok(ledger), Ok(())) => {
                self.model = expected;
                self.ledger = Some(ledger);
            }
            (Err(got), Err(want)) => {
                panic!("step {step}: reopen failed: {got:?} (the model agrees: {want:?})")
            }
            (got, want) => panic!(
                "step {step}: reopen gave {:?}, the model expected {want:?} \
                 (clock {}, last {}, earliest {:?})",
                got.map(|l| (l.now_ms(), l.next_deadline_ms())),
                self.model.clock,
                self.model.last_at,
                self.model.earliest_deadline()
            ),
        }
    }

    /// Try `sep` on a copy of what a crash now would leave, and check that it ends "refused"
    /// or "nothing lost". The ledger itself is left running; the step's own crash follows.
    fn separate(&mut self, sep: Separation, step: usize) {
        let Storage::Files { dir, path, copies } = &mut self.storage else {
            return;
        };
        *copies += 1;
        let trial = dir.path().join(format!("trial-{copies}.redb"));
        let journal = Ledger::journal_path(&trial);
        std::fs::copy(&*path, &trial).expect("copy the ledger file");
        let had_journal = Ledger::journal_path(&*path).exists();
        if had_journal {
            std::fs::copy(Ledger::journal_path(&*path), &journal).expect("copy the journal");
        }
        let mut opts = options(&self.clock);
        match sep {
            Separation::DeleteJournal => {
                let _ = std::fs::remove_file(&journal);
            }
            Separation::OtherCopysJournal => {
                // A copy of the crashed files, opened (which replays its journal), written
                // to, and crashed in turn: its journal has the same ledger id, a later epoch.
                let other = dir.path().join(format!("other-{copies}.redb"));
                std::fs::copy(&trial, &other).expect("copy the ledger file");
                if had_journal {
                    std::fs::copy(&journal, Ledger::journal_path(&other)).expect("copy");
                }
                let o = Ledger::open_with(&other, options(&self.clock).sweep_on_open(false))
                    .expect("the copy opens");
                for n in 0..2 {
                    // (A clock far behind refuses these: then there is no other journal.)
                    let _ = o.credit(Credit::grant("ws-other", 1, format!("other-{n}")));
                }
                if std::fs::copy(Ledger::journal_path(&other), &journal).is_err() {
                    return;
                }
                drop(o);
            }
            Separation::FlipBit(seed) => {
                let Ok(mut bytes) = std::fs::read(&journal) else {
                    return;
                };
                let end = last_entry_offset(&bytes);
                if end == 0 {
                    return;
                }
                let at = usize::from(seed) * 7919 % end;
                bytes[at] ^= 1 << (seed % 8);
                std::fs::write(&journal, &bytes).expect("write the journal");
            }
            Separation::JournalOff => opts = opts.journal(false),
        }
        let placed = std::fs::read(&journal).ok();
        let mut expected = self.model.clone();
        if expected.open_sweep().is_err() {
            return;
        }
        match Ledger::open_with(&trial, opts) {
            Ok(ledger) => {
                // Nothing lost: the open matches the model.
                let main = self.ledger.replace(ledger);
                let model = std::mem::replace(&mut self.model, expected);
                self.compare(step);
                self.audit(step);
                self.ledger = main;
                self.model = model;
            }
            Err(e) => {
                assert!(
                    !matches!(sep, Separation::JournalOff),
                    "step {step}: {sep:?}: an intact crash image must open, got {e}"
                );
                assert!(
                    e.to_string().contains(&journal.display().to_string()),
                    "step {step}: {sep:?}: the refusal must name the journal: {e}"
                );
                assert!(
                    matches!(e.category(), credit_ledger::ErrorCategory::Corruption),
                    "step {step}: {sep:?}: a refusal is a damaged-file error: {e:?}"
                );
                assert_eq!(
                    std::fs::read(&journal).ok(),
                    placed,
                    "step {step}: {sep:?}: a refusal leaves the journal as it was"
                );
                self.stats.refusals += 1;
            }
        }
        self.stats.separations += 1;
    }

    fn step(&mut self, i: usize, step: &Step) {
        match step {
            Step::One(op) => {
                let want = match op {
                    Op::Sweep { limit } => self.model.sweep_expired(*limit).map(Outcome::Sweep),
                    _ => self.model.apply_batch(std::slice::from_ref(op)).remove(0),
                };
                let l = self.ledger();
                let got = match op.clone() {
                    Op::Credit(c) => l.credit(c).map(Outcome::Credit),
                    Op::Adjust(a) => l.adjust(a).map(Outcome::Adjust),
                    Op::Start(s) => l.start_generation(s).map(Outcome::Start),
                    Op::Complete { generation_id } => {
                        l.complete_generation(&generation_id).map(Outcome::Complete)
                    }
                    Op::Fail {
                        generation_id,
                        reason,
                        message,
                    } => l
                        .fail_generation(&generation_id, reason, &message)
                        .map(Outcome::Fail),
                    Op::Sweep { limit } => l.sweep_expired(limit).map(Outcome::Sweep),
                    Op::VoidGrant(v) => l.void_grant(v).map(Outcome::VoidGrant),
                    Op::Ack { consumer, txn_id } => l.ack(&consumer, txn_id).map(Outcome::Ack),
                    Op::SetAlert {
                        workspace,
                        threshold_credits: Some(t),
                    } => l.set_alert(&workspace, t).map(Outcome::Alert),
                    Op::SetAlert {
                        workspace,
                        threshold_credits: None,
                    } => l.remove_alert(&workspace).map(Outcome::Alert),
                };
                assert_eq!(got, want, "step {i}: {op:?}");
                self.tally(&got);
            }
            Step::Batch(ops) => {
                let want = self.model.apply_batch(ops);
                let got = self.ledger().apply(ops);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g, w, "step {i}, batch op {j}: {:?}", ops[j]);
                }
                assert_eq!(got.len(), ops.len(), "step {i}: one result per op");
                for r in &got {
                    self.tally(r);
                }
            }
            Step::Forward(d) => {
                let t = self.model.clock.saturating_add(*d);
                self.set_clock(t);
            }
            Step::Back(d) => {
                let t = self.model.clock.saturating_sub(*d);
                self.set_clock(t);
            }
            Step::Reopen { crash, separate } => {
                if let (true, Some(sep)) = (*crash, separate) {
                    self.separate(*sep, i);
                }
                self.reopen(*crash, i);
                self.audit(i);
            }
            Step::AlertNear {
                workspace,
                below_by,
            } => {
                let ws = WORKSPACES[*workspace];
                let balance = self.model.ws.get(ws).map_or(0, |w| w.balance);
                let op = Op::SetAlert {
                    workspace: ws.to_string(),
                    threshold_credits: Some(balance.saturating_sub(*below_by).max(1)),
                };
                self.step(i, &Step::One(op));
                return;
            }
        }
        self.stats.steps += 1;
        self.compare(i);
        if (i + 1) % VERIFY_EVERY == 0 {
            self.audit(i);
        }
    }

    /// Every workspace and every generation of the pool, ledger against model.
    fn compare(&self, i: usize) {
        let l = self.ledger();
        let m = &self.model;
        let got = l.workspaces(None, 1000).expect("list workspaces");
        let want: Vec<WorkspaceSummary> = m.ws.iter().map(|(id, w)| m.summary(id, w)).collect();
        assert_eq!(got, want, "step {i}: workspaces differ from the model");
        for ws in m.ws.keys() {
            let got = l.grants(ws).expect("grants");
            assert_eq!(got, m.grant_views(ws), "step {i}: grants of {ws}");
        }
        for n in 0..GENERATIONS {
            let id = gen_id(n);
            let got = l.generation(&id);
            match m.gens.get(&id) {
                Some(g) => assert_eq!(got, Ok(m.view(&id, g)), "step {i}: generation {id}"),
                None => assert_eq!(
                    got,
                    Err(Error::UnknownGeneration {
                        generation: id.clone()
                    }),
                    "step {i}: generation {id} should not exist"
                ),
            }
        }
        for c in CONSUMERS {
            let want = m.consumers.get(c).copied().unwrap_or(0);
            assert_eq!(l.position(c), Ok(want), "step {i}: position of {c}");
        }
        for ws in WORKSPACES {
            let want = m.alerts.get(ws).copied();
            assert_eq!(l.alert(ws), Ok(want), "step {i}: alert of {ws}");
        }
        assert_eq!(l.now_ms(), m.clock.max(m.last_at), "step {i}: now_ms");
        assert_eq!(
            l.next_deadline_ms(),
            m.earliest_deadline(),
            "step {i}: next_deadline_ms"
        );
    }

    /// Every workspace's whole history, oldest first, against the model's log.
    fn compare_history(&self, i: usize) {
        let l = self.ledger();
        let m = &self.model;
        for ws in m.ws.keys() {
            let mut got = Vec::new();
            let mut cursor = None;
            loop {
                let page = l
                    .history(
                        ws,
                        &HistoryFilter::all(),
                        &PageRequest {
                            limit: 1000,
                            cursor: cursor.take(),
                            oldest_first: true,
                        },
                    )
                    .expect("history");
                got.extend(page.entries.into_iter().map(|e| {
                    (
                        e.id,
                        e.kind,
                        e.status,
                        i128::from(e.amount_credits),
                        e.balance_before_credits,
                        e.balance_after_credits,
                        e.at_ms,
                        e.generation_id,
                        e.reason,
                    )
                }));
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let want: Vec<_> = m
                .txns
                .iter()
                .enumerate()
                .filter(|(_, t)| &t.ws == ws)
                .map(|(n, t)| {
                    let status = match (t.kind, t.gen.as_ref().map(|g| m.gens[g].state)) {
                        (TxnKind::Usage, Some(GenModelState::Running)) => Status::Pending,
                        (TxnKind::Usage, Some(GenModelState::Refunded { .. })) => Status::Failed,
                        _ => Status::Completed,
                    };
                    (
                        n as u64 + 1,
                        t.kind,
                        status,
                        t.signed(),
                        t.before,
                        t.after,
                        t.at,
                        t.gen.clone(),
                        t.refund.as_ref().map(|r| r.0),
                    )
                })
                .collect();
            assert_eq!(got, want, "step {i}: history of {ws}");
        }
    }

    /// The change feed, paged in sizes that vary with the step, against the model's whole
    /// log: every transaction exactly once, in id order, across all workspaces.
    fn compare_feed(&self, i: usize) {
        let l = self.ledger();
        let m = &self.model;
        let page_size = 1 + (i % 7) as u32;
        let (mut got, mut after) = (Vec::new(), 0);
        loop {
            let page = l.changes(after, page_size).expect("changes");
            assert_eq!(page.last_txn_id, m.txns.len() as u64, "step {i}: feed end");
            assert!(
                page.entries.len() <= page_size as usize,
                "step {i}: page size"
            );
            if page.entries.is_empty() {
                break;
            }
            after = page.next_after(after);
            got.extend(page.entries.into_iter().map(|e| {
                (
                    e.id,
                    e.workspace,
                    e.kind,
                    i128::from(e.amount_credits),
                    e.balance_before_credits,
                    e.balance_after_credits,
                    e.at_ms,
                    e.generation_id,
                    e.reason,
                    // A grant notice's allocation is its content: the grant, its credits and
                    // its expiry.
                    if e.kind == TxnKind::GrantExpiring {
                        e.allocations
                    } else {
                        Vec::new()
                    },
                )
            }));
        }
        let want: Vec<_> = m
            .txns
            .iter()
            .enumerate()
            .map(|(n, t)| {
                (
                    n as u64 + 1,
                    t.ws.clone(),
                    t.kind,
                    t.signed(),
                    t.before,
                    t.after,
                    t.at,
                    t.gen.clone(),
                    t.refund.as_ref().map(|r| r.0),
                    if t.kind == TxnKind::GrantExpiring {
                        m.allocs[&(n as u64 + 1)].clone()
                    } else {
                        Vec::new()
                    },
                )
            })
            .collect();
        assert_eq!(got, want, "step {i}: the change feed");
    }

    /// `verify()`, conservation, and the log's length and last entry.
    fn audit(&mut self, i: usize) {
        let l = self.ledger();
        let report = l.verify().expect("verify runs");
        assert!(report.is_clean(), "step {i}: verify found {report:#?}");
        let totals = l.totals().expect("totals");
        assert!(totals.is_conserved(), "step {i}: not conserved: {totals:?}");
        let n = self.model.txns.len() as u64;
        assert_eq!(
            report.checked.transactions, n,
            "step {i}: transaction count"
        );
        if n > 0 {
            let t = l.transaction(n).expect("the last transaction");
            let mt = self.model.txn(n);
            assert_eq!(
                (
                    t.kind,
                    t.at_ms,
                    t.balance_after_credits,
                    t.workspace.as_str()
                ),
                (mt.kind, mt.at, mt.after, mt.ws.as_str()),
                "step {i}: the last transaction"
            );
        }
        assert_eq!(
            l.transaction(n + 1),
            Err(Error::UnknownTransaction { txn_id: n + 1 }),
            "step {i}: ids are dense"
        );
        self.compare_history(i);
        self.compare_feed(i);
        self.stats.verifies += 1;
    }
}

/// Decode `data` and run it against a ledger and the model. Panics on the first difference.
pub fn run(data: &[u8]) -> RunStats {
    run_on(data, Harness::new())
}

/// [`run`] on a file ledger with its journal; a crash is a copy of the files taken while the
/// ledger is open.
pub fn run_journal(data: &[u8]) -> RunStats {
    run_on(data, Harness::new_journal())
}

/// Where the last entry of the journal's open epoch starts (entries are consecutive from block 1),
/// or 0 when it has none: a flip before it is damage, not a torn tail.
fn last_entry_offset(journal: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let Some(epoch) = journal.get(12..20) else {
        return 0;
    };
    let (mut at, mut last) = (BLOCK, 0);
    while let Some(h) = journal.get(at..at + 28) {
        if &h[..4] != b"CLJ\x02" || &h[8..16] != epoch {
            break;
        }
        let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
        last = at;
        at += (28 + len).div_ceil(BLOCK) * BLOCK;
    }
    last
}

fn run_on(data: &[u8], mut h: Harness) -> RunStats {
    let steps = decode(data);
    for (i, s) in steps.iter().enumerate() {
        h.step(i, s);
    }
    // At the end: audit, then a crash and one more audit of what survived.
    h.audit(steps.len());
    h.separate(Separation::DeleteJournal, steps.len());
    h.reopen(true, steps.len());
    h.compare(steps.len());
    h.audit(steps.len());
    let logged = |kind| h.model.txns.iter().filter(|t| t.kind == kind).count() as u64;
    let (balance_low, grant_expiring) =
        (logged(TxnKind::BalanceLow), logged(TxnKind::GrantExpiring));
    h.stats.notifications = balance_low;
    h.stats.grant_notices = grant_expiring;
    h.stats.clone()
}
