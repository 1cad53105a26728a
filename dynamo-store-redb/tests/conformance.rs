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
