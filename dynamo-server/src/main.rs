//! `dynamo-server`: run a node, a local cluster, or talk to one. The
//! command line lives in the library ([`dynamo_server::cli`]), so a
//! binary of your own can add reconcilers and store engines to it.

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the request path allocates
/// many small, short-lived buffers across threads, where glibc malloc
/// spent ~15% of a node's CPU (measured with perf under `bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    dynamo_server::ServerBuilder::new().run()
}
