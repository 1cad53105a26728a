//! What the load is made of: the operation mix (YCSB's workloads A, B
//! and C, plus write-only), each worker's seeded stream of operations and
//! keys, key names, and the values writes carry.

use std::fmt::Write as _;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

/// Random bytes beyond one value, so that writes carry varied values
/// sliced out of one buffer without copying.
const VALUE_POOL_EXTRA: usize = 64 * 1024;

/// The operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 50% reads, 50% writes (YCSB A).
    A,
    /// 95% reads, 5% writes (YCSB B).
    B,
    /// Reads only (YCSB C).
    C,
    /// Writes only.
    W,
}

impl Workload {
    /// Reads per thousand operations.
    pub fn read_per_mille(self) -> u32 {
        match self {
            Workload::A => 500,
            Workload::B => 950,
            Workload::C => 1000,
            Workload::W => 0,
        }
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::W => "w",
        }
    }

    /// The mix in words, e.g. `50% reads, 50% writes`.
    pub fn describe(self) -> String {
        let reads = self.read_per_mille();
        format!("{}% reads, {}% writes", f64::from(reads) / 10.0, f64::from(1000 - reads) / 10.0)
    }
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `GET /kv/{key}`.
    Read,
    /// A blind `PUT /kv/{key}`.
    Write,
}

impl Op {
    /// `read` or `write`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// Mixes a seed and a worker number into an unrelated 64-bit seed
/// (splitmix64's finalizer).
pub(crate) fn stream_seed(seed: u64, worker: usize) -> u64 {
    let mut z = seed ^ (worker as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One worker's seeded stream of operations and keys.
#[derive(Debug, Clone)]
pub struct OpStream {
    rng: SmallRng,
    keys: u64,
    read_per_mille: u32,
}

impl OpStream {
    /// The stream of worker `worker` under `seed`; `keys` is at least 1.
    pub fn new(seed: u64, worker: usize, workload: Workload, keys: u64) -> Self {
        OpStream {
            rng: SmallRng::seed_from_u64(stream_seed(seed, worker)),
            keys: keys.max(1),
            read_per_mille: workload.read_per_mille(),
        }
    }

    /// The next operation and key index.
    pub fn next_op(&mut self) -> (Op, u64) {
        let op = match self.read_per_mille {
            0 => Op::Write,
            1000.. => Op::Read,
            p if self.rng.random_range(0..1000) < p => Op::Read,
            _ => Op::Write,
        };
        (op, self.rng.random_range(0..self.keys))
    }
}

/// Appends the name of key number `index` to `out`.
pub(crate) fn push_key_name(out: &mut String, index: u64) {
    let _ = write!(out, "user{index:010}");
}

/// The name of key number `index`: `user` and ten digits (URL-safe).
pub fn key_name(index: u64) -> String {
    let mut out = String::with_capacity(14);
    push_key_name(&mut out, index);
    out
}

/// Random bytes that values are sliced from (a reference, not a copy).
#[derive(Debug)]
pub(crate) struct Values {
    pool: Bytes,
    size: usize,
}

impl Values {
    /// Values of `size` bytes drawn from a pool seeded by `seed`.
    pub(crate) fn new(size: usize, seed: u64) -> Self {
        let mut buf = vec![0u8; size + VALUE_POOL_EXTRA];
        SmallRng::seed_from_u64(stream_seed(seed, usize::MAX)).fill_bytes(&mut buf);
        Values { pool: Bytes::from(buf), size }
    }

    /// A value at an offset drawn from `rng`.
    pub(crate) fn pick(&self, rng: &mut SmallRng) -> Bytes {
        let offset = rng.random_range(0..=self.pool.len() - self.size);
        self.pool.slice(offset..offset + self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::encode_key;

    #[test]
    fn operation_mix_follows_the_workload_and_the_seed() {
        let fraction = |w: Workload, seed: u64| {
            let mut s = OpStream::new(seed, 0, w, 1000);
            let reads = (0..100_000).filter(|_| s.next_op().0 == Op::Read).count();
            reads as f64 / 100_000.0
        };
        assert!((fraction(Workload::A, 1) - 0.50).abs() < 0.01, "{}", fraction(Workload::A, 1));
        assert!((fraction(Workload::B, 7) - 0.95).abs() < 0.005, "{}", fraction(Workload::B, 7));
        assert_eq!(fraction(Workload::C, 1), 1.0);
        assert_eq!(fraction(Workload::W, 1), 0.0);

        let seq = |seed: u64, worker: usize| {
            let mut s = OpStream::new(seed, worker, Workload::A, 10_000);
            (0..64).map(|_| s.next_op()).collect::<Vec<_>>()
        };
        assert_eq!(seq(1, 0), seq(1, 0), "same seed, same stream");
        assert_ne!(seq(1, 0), seq(2, 0), "another seed, another stream");
        assert_ne!(seq(1, 0), seq(1, 1), "workers have their own streams");
    }

    #[test]
    fn keys_are_uniform_over_the_range() {
        let mut s = OpStream::new(3, 0, Workload::W, 10);
        let mut hits = [0u32; 10];
        for _ in 0..100_000 {
            let (_, k) = s.next_op();
            hits[usize::try_from(k).unwrap()] += 1;
        }
        assert!(hits.iter().all(|&h| (9_000..11_000).contains(&h)), "{hits:?}");
        let mut one = OpStream::new(3, 0, Workload::A, 1);
        assert!((0..100).all(|_| one.next_op().1 == 0));
    }

    #[test]
    fn keys_are_named_url_safe() {
        assert_eq!(key_name(0), "user0000000000");
        assert_eq!(key_name(42), "user0000000042");
        assert_eq!(key_name(9_999_999_999), "user9999999999");
        assert_eq!(encode_key(&key_name(123)), key_name(123), "key names need no escaping");
    }

    #[test]
    fn values_are_slices_of_the_requested_size() {
        let values = Values::new(100, 1);
        let mut rng = SmallRng::seed_from_u64(5);
        let picks: Vec<Bytes> = (0..20).map(|_| values.pick(&mut rng)).collect();
        assert!(picks.iter().all(|v| v.len() == 100));
        assert!(picks.iter().any(|v| v != &picks[0]), "values vary");
        assert!(Values::new(0, 1).pick(&mut rng).is_empty());
    }
}
