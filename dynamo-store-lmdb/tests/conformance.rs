//! The shared store suites from dynamo-testkit, run against LMDB.

use std::path::Path;
use std::sync::Arc;

use dynamo_core::store::{Durability, Store};
use dynamo_store_lmdb::{LmdbOptions, LmdbStore};
use dynamo_testkit::conformance::{store_crash_test, store_suite};

fn opener(durability: Durability) -> impl Fn(&Path) -> Arc<dyn Store> + Send + Sync + 'static {
    move |dir: &Path| {
        let store = LmdbStore::open(dir, LmdbOptions::with_durability(durability))
            .unwrap_or_else(|e| panic!("open an lmdb store in {}: {e}", dir.display()));
        Arc::new(store) as Arc<dyn Store>
    }
}

#[test]
fn lmdb_passes_the_store_suite() {
    store_suite(opener(Durability::Fsync));
}

#[test]
fn lmdb_buffered_passes_the_store_suite() {
    store_suite(opener(Durability::Buffered));
}

#[test]
fn lmdb_survives_sigkill() {
    store_crash_test("lmdb_survives_sigkill", opener(Durability::Fsync));
}

/// `Buffered` promises that a process crash loses nothing (only an OS
/// crash may): the same crash test holds.
#[test]
fn lmdb_buffered_survives_sigkill() {
    store_crash_test("lmdb_buffered_survives_sigkill", opener(Durability::Buffered));
}
