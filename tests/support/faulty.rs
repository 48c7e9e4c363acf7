//! A fault-injecting [`redb::StorageBackend`] for crash and I/O-error tests.
//!
//! [`FaultyBackend`] is an in-memory file that keeps two images:
//!
//! - the **live** image, which reads see: every write lands here at once, as in an OS page
//!   cache;
//! - the **durable** image, which is what survives a power cut: it catches up with the live
//!   image only at `sync_data`.
//!
//! Between two syncs the writes (and `set_len` calls) are kept, in order, as *pending*. At a
//! chosen event it "crashes" ([`Plan::CrashAt`]): the durable image becomes what a power cut at
//! that moment could leave on disk, according to [`CrashMode`], and from then on every call
//! fails with an I/O error. [`FaultyBackend::durable_image`] hands that image back, and
//! [`FaultyBackend::from_image`] opens a new backend on it: "reopen from the post-crash image".
//!
//! The crash images stay within redb's media assumptions (`docs/design.md`, "Assumptions about
//! underlying media"): single bytes are written whole or not at all, data is durable after a
//! sync, and a write never changes bytes outside its own range (powersafe overwrite). Writes
//! that were not synced may reach the disk in any subset, and one of them may be torn.
//!
//! An **event** is a `write` or a `sync_data` call, counted from 0 since the backend was
//! created; `set_len`, `read` and `len` are not events. [`FaultyBackend::events`] tells a test
//! how many events a fault-free run issued, so it can then crash at each one.
//!
//! Besides crashes, [`Plan::FailAt`] makes one event return an error without crashing (an
//! `fsync` or `write` error), choosing whether the failed sync's data became durable anyway.
//!
//! To test every crash point of a long workload cheaply, run it once on
//! [`FaultyBackend::recording`], take its [`IoLog`], and let [`CrashImages`] compute the image a
//! crash at each event would leave (the same code path as a live crash, so the images are
//! identical for a deterministic workload; confirm on a sample of live crashes).
//!
//! Use it from a test with `#[path = "support/faulty.rs"] mod faulty;`.
//!
//! A backend is `Clone`; clones share one state, so a test keeps a clone to inspect the backend
//! that it handed to [`credit_ledger::Ledger::open_backend`].
#![allow(dead_code)]

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a crash leaves on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every write since the last completed sync is lost; the disk holds exactly the image of
    /// the last sync. (A crash at a sync: that sync did not complete.)
    DropUnsynced,
    /// Some of the writes since the last completed sync reached the disk, in a pseudo-random
    /// subset chosen from `seed` and the event number, and one of them, also chosen at random,
    /// is torn: only some of its 512-byte sectors (or, for a short write, only a prefix of its
    /// bytes) landed.
    Torn {
        /// Chooses the subset and the tear; the same seed and event give the same image.
        seed: u64,
    },
    /// The crashing event completes and then the machine dies, before the caller hears of it:
    /// at a sync, every pending write is durable (the commit landed but was never
    /// acknowledged); at a write, the write reached the page cache only and is lost.
    AfterSync,
}

/// What a failing event does, for [`Plan::FailAt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The event is a sync: it returns an error, but its data did become durable (the disk
    /// flushed it and the error came after, or the error report is spurious).
    SyncFailsButLands,
    /// The event is a sync: it returns an error and its pending writes never reach the durable
    /// image (they stay in the live image, as dirty pages a failed fsync leaves behind).
    SyncFailsAndIsLost,
    /// The event is a write: it returns an error and changes nothing.
    WriteFails,
}

/// When the backend misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Never: a well-behaved in-memory disk that still tracks durability.
    None,
    /// Crash at event `at` (0-based): that event does not complete, the durable image becomes a
    /// crash image per `mode`, and every later call fails.
    CrashAt {
        /// The event that crashes.
        at: u64,
        /// What the crash leaves on disk.
        mode: CrashMode,
    },
    /// Event `at` (0-based) returns an error per `failure`, if it is of the matching kind (a
    /// sync for the `Sync*` failures, a write for `WriteFails`); otherwise the first matching
    /// event after `at` fails. Every other event succeeds: the backend itself keeps working
    /// (whatever the database on top makes of the error).
    FailAt {
        /// The first event that may fail.
        at: u64,
        /// How it fails.
        failure: Failure,
    },
}

/// A write or length change not yet synced.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// What happened to a backend, for test assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultReport {
    /// Events issued so far (writes and syncs), including the one that crashed or failed.
    pub events: u64,
    /// Syncs that completed.
    pub syncs: u64,
    /// The event at which the backend crashed, if it did.
    pub crashed_at: Option<u64>,
    /// Whether the crashing event was a sync (else a write).
    pub crashed_on_sync: bool,
    /// Pending (unsynced) writes and length changes at the crash.
    pub pending_at_crash: usize,
    /// Of those, how many reached the crash image (whole or torn).
    pub landed_at_crash: usize,
    /// The event that failed by [`Plan::FailAt`], if one did.
    pub failed_at: Option<u64>,
    /// The numbers of the events that were syncs, in order (to aim a fault at a commit's
    /// last sync).
    pub sync_events: Vec<u64>,
}

struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    plan: Plan,
    report: FaultReport,
    crashed: bool,
    /// Every successful write, length change and sync, when recording.
    log: Option<Vec<Logged>>,
}

/// One storage call, as a recording backend saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Logged {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Sync,
}

/// The fault-injecting backend. See the [module docs](self).
#[derive(Clone)]
pub struct FaultyBackend {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("FaultyBackend")
            .field("len", &s.live.len())
            .field("pending", &s.pending.len())
            .field("plan", &s.plan)
            .field("report", &s.report)
            .finish()
    }
}

/// SplitMix64: a small deterministic PRNG, so the crash images depend only on the seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A coin flip.
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

fn usize_of(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

fn write_into(image: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if image.len() < end {
        // A write past the end extends the file, as on a real file system.
        image.resize(end, 0);
    }
    image[offset..end].copy_from_slice(data);
}

fn apply(image: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => write_into(image, *offset as usize, data),
        Pending::SetLen(len) => image.resize(*len as usize, 0),
    }
}

/// Apply part of a write: whole 512-byte sectors chosen at random (at least one lands and, when
/// there are two or more, at least one does not), or a strict prefix of a short write.
fn apply_torn(image: &mut Vec<u8>, offset: usize, data: &[u8], rng: &mut SplitMix64) {
    const SECTOR: usize = 512;
    if data.len() <= SECTOR {
        let keep = rng.below(data.len() as u64) as usize;
        if keep > 0 {
            write_into(image, offset, &data[..keep]);
        }
        return;
    }
    let sectors = data.len().div_ceil(SECTOR);
    let mut lands: Vec<bool> = (0..sectors).map(|_| rng.coin()).collect();
    let forced_in = rng.below(sectors as u64) as usize;
    let mut forced_out = rng.below(sectors as u64) as usize;
    if forced_out == forced_in {
        forced_out = (forced_in + 1) % sectors;
    }
    lands[forced_in] = true;
    lands[forced_out] = false;
    for (i, land) in lands.into_iter().enumerate() {
        if land {
            let start = i * SECTOR;
            let end = (start + SECTOR).min(data.len());
            write_into(image, offset + start, &data[start..end]);
        }
    }
}

/// The disk image a crash at event `event` leaves, given the durable image and the pending
/// writes (including the crashing write itself when the event is a write), and how many of
/// the pending operations reached it.
fn crash_image(
    durable: &[u8],
    pending: &[Pending],
    event: u64,
    on_sync: bool,
    mode: CrashMode,
) -> (Vec<u8>, usize) {
    let mut image = durable.to_vec();
    let mut landed = 0;
    match mode {
        CrashMode::DropUnsynced => {}
        CrashMode::AfterSync => {
            if on_sync {
                for op in pending {
                    apply(&mut image, op);
                }
                landed = pending.len();
            }
        }
        CrashMode::Torn { seed } => {
            let mut rng = SplitMix64(seed ^ event.wrapping_mul(0xA24B_AED4_963E_E407));
            let writes: Vec<usize> = pending
                .iter()
                .enumerate()
                .filter(|(_, p)| matches!(p, Pending::Write { data, .. } if !data.is_empty()))
                .map(|(i, _)| i)
                .collect();
            let torn = if writes.is_empty() {
                None
            } else {
                Some(writes[rng.below(writes.len() as u64) as usize])
            };
            for (i, op) in pending.iter().enumerate() {
                if Some(i) == torn {
                    if let Pending::Write { offset, data } = op {
                        apply_torn(&mut image, *offset as usize, data, &mut rng);
                        landed += 1;
                    }
                } else if rng.coin() {
                    apply(&mut image, op);
                    landed += 1;
                }
            }
        }
    }
    (image, landed)
}

impl State {
    fn fresh(image: Vec<u8>, plan: Plan) -> Self {
        State {
            live: image.clone(),
            durable: image,
            pending: Vec::new(),
            plan,
            report: FaultReport::default(),
            crashed: false,
            log: None,
        }
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.crashed {
            Err(io::Error::other(
                "injected crash: the simulated machine is down",
            ))
        } else {
            Ok(())
        }
    }

    /// Turn the pending writes into the crash image per `mode`, and go down.
    fn crash(&mut self, event: u64, on_sync: bool, mode: CrashMode) {
        let pending = std::mem::take(&mut self.pending);
        let (image, landed) = crash_image(&self.durable, &pending, event, on_sync, mode);
        self.durable = image;
        self.report.crashed_at = Some(event);
        self.report.crashed_on_sync = on_sync;
        self.report.pending_at_crash = pending.len();
        self.report.landed_at_crash = landed;
        self.live = self.durable.clone();
        self.crashed = true;
    }

    /// Count an event and decide its fate: `Ok(true)` go ahead, `Ok(false)` fail it without
    /// crashing (a [`Plan::FailAt`] hit), `Err` crashed.
    fn event(&mut self, is_sync: bool, write: Option<(u64, &[u8])>) -> io::Result<bool> {
        self.check_alive()?;
        let n = self.report.events;
        self.report.events += 1;
        if is_sync {
            self.report.sync_events.push(n);
        }
        match self.plan {
            Plan::CrashAt { at, mode } if n == at => {
                if let Some((offset, data)) = write {
                    // The crashing write was issued: it may be (partly) on the platter.
                    self.pending.push(Pending::Write {
                        offset,
                        data: data.to_vec(),
                    });
                }
                self.crash(n, is_sync, mode);
                Err(io::Error::other(format!(
                    "injected crash at event {n} ({})",
                    if is_sync { "sync" } else { "write" }
                )))
            }
            Plan::FailAt { at, failure } if n >= at && self.report.failed_at.is_none() => {
                let matches = match failure {
                    Failure::SyncFailsButLands | Failure::SyncFailsAndIsLost => is_sync,
                    Failure::WriteFails => !is_sync,
                };
                if matches {
                    self.report.failed_at = Some(n);
                    Ok(false)
                } else {
                    Ok(true)
                }
            }
            _ => Ok(true),
        }
    }

    fn sync(&mut self) {
        if let Some(log) = &mut self.log {
            log.push(Logged::Sync);
        }
        for op in std::mem::take(&mut self.pending) {
            apply(&mut self.durable, &op);
        }
        debug_assert_eq!(self.durable, self.live);
        self.report.syncs += 1;
    }
}

impl FaultyBackend {
    /// An empty, well-behaved backend (no faults).
    pub fn new() -> Self {
        Self::with_plan(Plan::None)
    }

    /// An empty backend that misbehaves per `plan`.
    pub fn with_plan(plan: Plan) -> Self {
        Self::from_image_with_plan(Vec::new(), plan)
    }

    /// An empty, well-behaved backend that records every storage call, so that
    /// [`CrashImages`] can later compute the crash image at any of its events.
    pub fn recording() -> Self {
        let b = Self::new();
        b.lock().log = Some(Vec::new());
        b
    }

    /// The calls recorded so far (empty unless made by [`FaultyBackend::recording`]).
    pub fn io_log(&self) -> IoLog {
        IoLog {
            ops: self.lock().log.clone().unwrap_or_default(),
        }
    }

    /// A backend whose disk holds `image` (durable), with no faults: reopen after a crash.
    pub fn from_image(image: Vec<u8>) -> Self {
        Self::from_image_with_plan(image, Plan::None)
    }

    /// A backend whose disk holds `image`, that misbehaves per `plan` (events count from 0).
    pub fn from_image_with_plan(image: Vec<u8>, plan: Plan) -> Self {
        FaultyBackend {
            state: Arc::new(Mutex::new(State::fresh(image, plan))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not hide the image from the test that inspects it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events (writes and syncs) issued so far.
    pub fn events(&self) -> u64 {
        self.lock().report.events
    }

    /// Whether the backend has crashed.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// What happened so far.
    pub fn report(&self) -> FaultReport {
        self.lock().report.clone()
    }

    /// Change the plan from now on (event numbers stay absolute).
    pub fn set_plan(&self, plan: Plan) {
        self.lock().plan = plan;
    }

    /// What is on the disk: after a crash, the crash image; otherwise the image of the last
    /// completed sync (what a crash that drops every unsynced write would leave now).
    pub fn durable_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// What reads see now (the durable image plus every pending write).
    pub fn live_image(&self) -> Vec<u8> {
        self.lock().live.clone()
    }

    /// Unsynced writes and length changes.
    pub fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }
}

impl Default for FaultyBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl redb::StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        let s = self.lock();
        s.check_alive()?;
        Ok(s.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let s = self.lock();
        s.check_alive()?;
        let start = usize_of(offset)?;
        let end = start
            .checked_add(out.len())
            .filter(|e| *e <= s.live.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(&s.live[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.check_alive()?;
        let n = usize_of(len)?;
        s.live.resize(n, 0);
        s.pending.push(Pending::SetLen(len));
        if let Some(log) = &mut s.log {
            log.push(Logged::SetLen(len));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.lock();
        if s.event(true, None)? {
            s.sync();
            return Ok(());
        }
        // Lost (the other failure): the durable image keeps its old contents; the writes stay
        // pending, so a later successful sync would still flush them (as a retried fsync may).
        if let Plan::FailAt {
            failure: Failure::SyncFailsButLands,
            ..
        } = s.plan
        {
            s.sync();
        }
        Err(io::Error::other("injected fsync failure"))
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        if !s.event(false, Some((offset, data)))? {
            return Err(io::Error::other("injected write failure"));
        }
        let start = usize_of(offset)?;
        write_into(&mut s.live, start, data);
        s.pending.push(Pending::Write {
            offset,
            data: data.to_vec(),
        });
        if let Some(log) = &mut s.log {
            log.push(Logged::Write {
                offset,
                data: data.to_vec(),
            });
        }
        Ok(())
    }
}

/// The storage calls of a run, recorded by [`FaultyBackend::recording`].
#[derive(Debug, Clone, Default)]
pub struct IoLog {
    ops: Vec<Logged>,
}

impl IoLog {
    /// Events (writes and syncs) in the log.
    pub fn events(&self) -> u64 {
        self.ops
            .iter()
            .filter(|o| !matches!(o, Logged::SetLen(_)))
            .count() as u64
    }

    /// Whether event `event` is a sync.
    pub fn is_sync(&self, event: u64) -> bool {
        self.ops
            .iter()
            .filter(|o| !matches!(o, Logged::SetLen(_)))
            .nth(event as usize)
            .is_some_and(|o| matches!(o, Logged::Sync))
    }
}

/// Computes crash images from an [`IoLog`] without re-running the workload.
///
/// A deterministic workload issues the same storage calls on every run up to the crash, so a
/// crash at event N with mode M leaves exactly the image that [`CrashImages::image_at`]
/// (N, M) returns: the image a [`FaultyBackend`] with `Plan::CrashAt { at: N, mode: M }`
/// would hand back. (Tests should confirm this on a sample of live crashes.) It walks the log
/// forward once, so ask for events in non-decreasing order.
#[derive(Debug)]
pub struct CrashImages {
    log: IoLog,
    pos: usize,
    next_event: u64,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

impl CrashImages {
    /// Start at the empty disk the recorded run began with.
    pub fn new(log: IoLog) -> Self {
        CrashImages {
            log,
            pos: 0,
            next_event: 0,
            durable: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The image a crash at `event` leaves under `mode`.
    ///
    /// # Panics
    /// If `event` is before an event already asked for, or past the end of the log (test
    /// misuse, not a property of the storage).
    pub fn image_at(&mut self, event: u64, mode: CrashMode) -> Vec<u8> {
        assert!(
            event >= self.next_event,
            "events must be asked for in order"
        );
        loop {
            match &self.log.ops[self.pos] {
                Logged::SetLen(len) => self.pending.push(Pending::SetLen(*len)),
                Logged::Write { offset, data } => {
                    if self.next_event == event {
                        let mut pending = self.pending.clone();
                        pending.push(Pending::Write {
                            offset: *offset,
                            data: data.clone(),
                        });
                        return crash_image(&self.durable, &pending, event, false, mode).0;
                    }
                    self.pending.push(Pending::Write {
                        offset: *offset,
                        data: data.clone(),
                    });
                    self.next_event += 1;
                }
                Logged::Sync => {
                    if self.next_event == event {
                        return crash_image(&self.durable, &self.pending, event, true, mode).0;
                    }
                    for op in std::mem::take(&mut self.pending) {
                        apply(&mut self.durable, &op);
                    }
                    self.next_event += 1;
                }
            }
            self.pos += 1;
        }
    }
}
