//! One malloc arena for the simulation's threads (glibc only).
//!
//! glibc gives a thread that allocates while the others hold their arenas an arena of its own,
//! up to eight per core, and each arena keeps what was freed in it. The simulation's 64
//! workers take turns leading a group commit, so redb's page buffers are allocated in one
//! arena and freed in another, and every arena ends up holding its share of freed pages: with
//! `--workspaces 20000 --generations 1` the peak RSS was 185 MiB with glibc's default and 113
//! MiB with one arena, in the same wall time (30.4 s) on the 2-core VM. The library itself
//! stays allocator-agnostic; an app that embeds the ledger with many threads on glibc can set
//! `MALLOC_ARENA_MAX=1` in its environment for the same effect.

/// How many malloc arenas the simulation's threads share.
const SIMULATE_MALLOC_ARENAS: i32 = 1;

/// Limit the process to [`SIMULATE_MALLOC_ARENAS`] arenas from now on, unless the operator set
/// `MALLOC_ARENA_MAX` (glibc read it at start-up, and it wins). Call before the workers start.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_arenas() {
    /// glibc's `M_ARENA_MAX` parameter of `mallopt` (malloc.h).
    const M_ARENA_MAX: i32 = -8;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: `mallopt` sets a tuning parameter of glibc's allocator under its own lock; it may
    // be called at any time, and a failure (it returns 0) leaves the default in place, which is
    // only more memory, never wrong.
    let _ = unsafe { mallopt(M_ARENA_MAX, SIMULATE_MALLOC_ARENAS) };
}

/// Other allocators do not have glibc's arenas.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}
