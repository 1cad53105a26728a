//! Conformance suites every backend runs against itself.
//!
//! A backend proves itself with one call from its own tests, and the suite
//! holds every case, so a new backend cannot forget one:
//!
//! ```ignore
//! #[test]
//! fn my_store_passes_the_store_suite() {
//!     store_suite(|dir| Arc::new(MyStore::open(dir).unwrap()));
//! }
//! ```
//!
//! - [`store_suite`]: point reads and writes, atomic batches, table
//!   isolation, ordered partition scans, reopening, concurrent writers,
//!   values at the size limit.
//! - [`store_crash_test`]: a child process killed with SIGKILL mid-write
//!   loses no acknowledged write.
//! - [`transport_suite`]: round trips, 1,000 concurrent requests, frame
//!   limits, deadlines against dead and silent peers, restarts, shutdown.

mod crash;
mod store;
mod transport;

pub use crash::store_crash_test;
pub use store::store_suite;
pub use transport::{transport_suite, TransportFixture};
