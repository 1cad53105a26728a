//! The shared store conformance suite and crash test, run against redb.

use std::sync::Arc;

use dynamo_core::store::{Durability, Store};
use dynamo_store_redb::{RedbOptions, RedbStore};
use dynamo_testkit::conformance::{store_crash_test, store_suite};

fn open(dir: &std::path::Path, durability: Durability) -> Arc<dyn Store> {
    let options = RedbOptions { durability, ..RedbOptions::default() };
    match RedbStore::open(dir, options) {
        Ok(store) => Arc::new(store),
        Err(e) => panic!("open a redb store in {}: {e}", dir.display()),
    }
}

#[test]
fn redb_passes_the_store_suite() {
    store_suite(|dir| open(dir, Durability::Fsync));
}

#[test]
fn redb_buffered_passes_the_store_suite() {
    store_suite(|dir| open(dir, Durability::Buffered));
}

#[test]
fn redb_survives_sigkill() {
    store_crash_test("redb_survives_sigkill", |dir| open(dir, Durability::Fsync));
}

#[test]
fn redb_buffered_survives_sigkill_through_its_log() {
    store_crash_test("redb_buffered_survives_sigkill_through_its_log", |dir| open(dir, Durability::Buffered));
}

/// A log of 16 KiB wraps around every few dozen batches, so the kills land
/// around checkpoints too.
#[test]
fn redb_with_a_small_log_survives_sigkill() {
    store_crash_test("redb_with_a_small_log_survives_sigkill", |dir| {
        let options = RedbOptions { wal_bytes: 16 * 1024, ..RedbOptions::default() };
        match RedbStore::open(dir, options) {
            Ok(store) => Arc::new(store),
            Err(e) => panic!("open a redb store in {}: {e}", dir.display()),
        }
    });
}
