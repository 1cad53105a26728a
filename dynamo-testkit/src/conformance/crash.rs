//! Crash testing a store: SIGKILL a writer, reopen, count what survived.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynamo_core::store::{Store, Table, WriteBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CHILD_ENV: &str = "DYNAMO_CRASH_CHILD_DIR";
const WRITER_THREADS: u64 = 2;

fn keys(thread: u64, i: u64) -> (Bytes, Bytes, Bytes) {
    let a = Bytes::from(format!("t{thread}/a{i:08}"));
    let b = Bytes::from(format!("t{thread}/b{i:08}"));
    let value = Bytes::from(format!("value-{thread}-{i}-").repeat(4));
    (a, b, value)
}

/// Proves that `open`'s store loses no acknowledged write when its process
/// is killed.
///
/// The test binary is run again as a child process that executes only
/// `test_name` (the exact name of the `#[test]` calling this function).
/// The child opens the store, writes two-key batches from two threads
/// and prints each batch it got `Ok` for. The parent kills it with SIGKILL
/// at a seeded random moment, reopens the store and checks that every
/// acknowledged batch is there, and that every batch is all or nothing.
/// It does this for three rounds on the same directory. The seed comes
/// from `DYNAMO_TEST_SEED` (see [`crate::test_seed`]).
///
/// # Panics
/// When a write is lost or half-applied, or the child cannot run.
pub fn store_crash_test<F>(test_name: &str, open: F)
where
    F: Fn(&Path) -> Arc<dyn Store>,
{
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(&PathBuf::from(dir), &open);
    }
    let seed = crate::test_seed(0x5eed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for round in 0..3u64 {
        let kill_after = rng.random_range(20..300);
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("DYNAMO_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the crash child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("acked ") {
                let mut parts = rest.split(' ');
                let t = parts.next().and_then(|s| s.parse().ok());
                let i = parts.next().and_then(|s| s.parse().ok());
                if let (Some(t), Some(i)) = (t, i) {
                    acked.push((t, i));
                    seen += 1;
                }
            }
            if seen >= kill_after || Instant::now() > deadline {
                break;
            }
        }
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        assert!(
            seen >= kill_after,
            "round {round}: the child stopped after {seen} writes ({status}), seed {seed}"
        );

        let store = open(dir.path());
        for &(t, i) in &acked {
            let (a, b, value) = keys(t, i);
            assert_eq!(
                store.get(Table::Data, &a).unwrap().as_ref(),
                Some(&value),
                "acked {a:?} lost, seed {seed}"
            );
            assert_eq!(
                store.get(Table::Data, &b).unwrap().as_ref(),
                Some(&value),
                "acked {b:?} lost, seed {seed}"
            );
        }
        let rows = store.scan(Table::Data, b"", None, usize::MAX).unwrap();
        let a_count = rows.iter().filter(|(k, _)| k.windows(2).any(|w| w == b"/a")).count();
        assert_eq!(a_count * 2, rows.len(), "a batch was half applied, seed {seed}");
        let progress = store.get(Table::Meta, b"rounds").unwrap().map_or(0, |v| v.len());
        assert_eq!(progress as u64, round + 1, "the child's first batch of each round is durable");
    }
}

/// The child: write forever, report every acknowledged batch.
fn child<F: Fn(&Path) -> Arc<dyn Store>>(dir: &Path, open: &F) -> ! {
    let store = open(dir);
    let round: u64 = std::env::var("DYNAMO_CRASH_ROUND").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let rounds = store.get(Table::Meta, b"rounds").unwrap().unwrap_or_default();
    let mut marker = WriteBatch::new();
    marker.put(Table::Meta, Bytes::from_static(b"rounds"), Bytes::from(vec![1u8; rounds.len() + 1]));
    store.write(marker).expect("child: first write");
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..WRITER_THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                let thread = round * WRITER_THREADS + t;
                for i in 0.. {
                    let (a, b, value) = keys(thread, i);
                    let mut batch = WriteBatch::new();
                    batch.put(Table::Data, a, value.clone());
                    batch.put(Table::Data, b, value);
                    store.write(batch).expect("child: durable write");
                    let mut out = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let _ = writeln!(out, "acked {thread} {i}");
                    let _ = out.flush();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(0)
}
