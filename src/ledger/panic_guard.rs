//! Which panics the ledger catches: a per-thread mark, set while storage work runs under
//! [`super::open::no_panic`], for panic hooks to consult.
//!
//! A process's panic hook runs when a panic starts, before unwinding reaches the
//! `catch_unwind` that turns it into an [`Error`](crate::Error). A hook that reports every
//! panic as a bug therefore also reports the redb panics on damaged pages that the caller is
//! about to receive as a typed `Corruption` or `NotALedger` error. The library does not
//! replace the process-wide hook (that is the application's call); it says, for the thread
//! that is panicking, whether the panic will be caught.

use std::cell::Cell;

thread_local! {
    /// How many panic guards this thread is inside (guards nest: an open reopens, a write
    /// reloads).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// True while the current thread runs the ledger's storage work under its panic guard, so a
/// panic now is caught and returned to the caller as an [`Error`](crate::Error).
///
/// For panic hooks: a hook that reports panics as bugs can skip these, because the caller gets
/// the error, which says what to do. `credit-ledger`'s own hook does exactly that.
pub fn inside_panic_guard() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Marks the current thread as inside a panic guard until dropped (also when the guarded work
/// unwinds, so the mark is still set while the panic hook runs).
pub(super) struct Marked(());

impl Marked {
    pub(super) fn enter() -> Marked {
        DEPTH.with(|d| d.set(d.get().saturating_add(1)));
        Marked(())
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::error::Error;

    thread_local! {
        /// What the test hook saw on this thread: `Some(inside_panic_guard())` per panic.
        static SEEN: Cell<Option<bool>> = const { Cell::new(None) };
    }

    #[test]
    fn the_hook_sees_the_guard_while_the_panic_is_caught_and_not_outside_it() {
        // The hook is process-wide, so record per thread and hand every panic on to the
        // previous hook: other tests of this binary may panic at the same time.
        let previous = std::sync::Arc::new(std::panic::take_hook());
        let chained = std::sync::Arc::clone(&previous);
        std::panic::set_hook(Box::new(move |info| {
            SEEN.with(|s| s.set(Some(inside_panic_guard())));
            chained(info);
        }));

        assert!(!inside_panic_guard());
        let caught: crate::Result<()> = super::super::open::no_panic(
            |m| Error::Storage { message: m },
            || panic!("a damaged page"),
        );
        assert!(matches!(caught, Err(Error::Storage { .. })), "{caught:?}");
        assert_eq!(SEEN.with(Cell::take), Some(true), "inside the guard");
        assert!(!inside_panic_guard(), "the mark is gone after the guard");

        let escaped = std::panic::catch_unwind(|| panic!("a bug"));
        assert!(escaped.is_err());
        assert_eq!(SEEN.with(Cell::take), Some(false), "outside any guard");

        // Nested guards: the inner one ending leaves the outer mark in place.
        let nested: crate::Result<bool> = super::super::open::no_panic(
            |m| Error::Storage { message: m },
            || {
                let inner: crate::Result<()> =
                    super::super::open::no_panic(|m| Error::Storage { message: m }, || Ok(()));
                inner?;
                Ok(inside_panic_guard())
            },
        );
        assert!(matches!(nested, Ok(true)));

        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| previous(info)));
    }
}
