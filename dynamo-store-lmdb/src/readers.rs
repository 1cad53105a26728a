//! A counting gate that keeps concurrent read transactions within LMDB's
//! reader table.
//!
//! Every open read transaction holds one of `max_readers` slots; one more
//! fails with `MDB_READERS_FULL`. Core calls the store from a blocking
//! thread pool that may run hundreds of threads, so rather than failing a
//! burst of reads, a reader past the limit waits for a slot. The fast path
//! is one compare-and-swap to enter and one atomic decrement to leave; the
//! mutex and condition variable are only touched when the gate is full.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

#[derive(Debug)]
pub(crate) struct ReaderGate {
    max: u32,
    active: AtomicU32,
    waiting: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
}

/// A reader slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct ReaderPermit<'g> {
    gate: &'g ReaderGate,
}

impl ReaderGate {
    /// A gate letting `max` (at least 1) readers in at once.
    pub(crate) fn new(max: u32) -> Self {
        ReaderGate {
            max: max.max(1),
            active: AtomicU32::new(0),
            waiting: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
        }
    }

    fn try_enter(&self) -> bool {
        // SeqCst pairs with `leave`: see `enter`.
        let mut current = self.active.load(Ordering::SeqCst);
        while current < self.max {
            match self.active.compare_exchange_weak(current, current + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
        false
    }

    /// Takes a slot, waiting for one if all are taken.
    pub(crate) fn enter(&self) -> ReaderPermit<'_> {
        if !self.try_enter() {
            let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            // Announce the wait before re-checking: a reader leaving after
            // the re-check sees `waiting > 0` and must take the lock (which
            // it only gets once this thread sleeps) to notify it.
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while !self.try_enter() {
                guard = self.freed.wait(guard).unwrap_or_else(PoisonError::into_inner);
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        ReaderPermit { gate: self }
    }

    fn leave(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.freed.notify_one();
        }
    }

    #[cfg(test)]
    pub(crate) fn active(&self) -> u32 {
        self.active.load(Ordering::SeqCst)
    }
}

impl Drop for ReaderPermit<'_> {
    fn drop(&mut self) {
        self.gate.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn never_more_than_max_inside() {
        let gate = Arc::new(ReaderGate::new(3));
        let inside = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (gate, inside, peak) = (Arc::clone(&gate), Arc::clone(&inside), Arc::clone(&peak));
                thread::spawn(move || {
                    for _ in 0..200 {
                        let _permit = gate.enter();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!(gate.active(), 0);
    }

    #[test]
    fn a_waiter_wakes_when_a_slot_frees() {
        let gate = Arc::new(ReaderGate::new(1));
        let permit = gate.enter();
        let waiter = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || {
                let _p = gate.enter();
            })
        };
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the second reader waits");
        drop(permit);
        waiter.join().unwrap();
        assert_eq!(gate.active(), 0);
    }
}
