//! What the clients of a simulated run do.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use dynamo_core::node::ReadOptions;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::history::{encode_set, union_of};
use crate::Cluster;

/// A boxed future, as a [`Workload`] returns.
pub type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// One client of a simulated run: issues operations through
/// [`Cluster::client`] (which records them in the history the checks
/// read), picking nodes and keys from `rng`, and spreading them over the
/// fault schedule's [`HORIZON`](super::HORIZON) of simulated time (with
/// `tokio::time::sleep`: simulated time costs nothing), so they meet the
/// faults.
///
/// Runs for one seed are single-threaded: the future need not be `Send`.
/// Whatever it does must depend only on `rng` and the answers it gets, so
/// a seed replays exactly.
pub trait Workload: Send + Sync + 'static {
    /// Runs client number `client`'s `ops` operations against `cluster`.
    fn run_client<'a>(
        &'a self,
        cluster: &'a Cluster,
        client: usize,
        ops: usize,
        rng: ChaCha8Rng,
    ) -> BoxFuture<'a>;

    /// Whether every put writes set-union data ([`encode_set`]) whose
    /// elements must never be lost once acknowledged, so the
    /// no-lost-add check applies (under a reconciler that keeps or unions
    /// siblings).
    fn set_union(&self, key: &[u8]) -> bool;
}

/// The built-in mix, over a few keys of each kind:
///
/// - `cart-*`: set-union carts, read-modify-write with the read's context
///   (each add a new element);
/// - `reg-*`: registers overwritten with the read's context, deleted with
///   it and written again;
/// - `blind-*`: writes without a context;
/// - reads at a random R everywhere.
///
/// Every value is unique per key, so deletes can be checked exactly.
#[derive(Debug, Clone, Copy, Default)]
pub struct MixedWorkload;

const CARTS: u32 = 3;
const REGISTERS: u32 = 3;
const BLIND: u32 = 2;

impl MixedWorkload {
    async fn op(cluster: &Cluster, client: usize, op: usize, rng: &mut ChaCha8Rng) {
        let node = rng.random_range(0..cluster.len());
        let c = cluster.client(node);
        let n = cluster.ring().replicas();
        let read = ReadOptions { r: Some(rng.random_range(1..=n)), timeout: None };
        let unique = format!("c{client}-op{op}");
        match rng.random_range(0..20) {
            0..=7 => {
                let key = format!("cart-{}", rng.random_range(0..CARTS));
                let Ok(got) = c.get_with(key.as_bytes(), read).await else { return };
                let mut set = union_of(&got.values);
                // Elements unique across clients and operations.
                set.insert(((client as u64) << 32) | op as u64);
                let _ = c.put(key.as_bytes(), encode_set(&set), Some(&got.context)).await;
            }
            8..=11 => {
                let key = format!("reg-{}", rng.random_range(0..REGISTERS));
                let Ok(got) = c.get_with(key.as_bytes(), read).await else { return };
                let _ = c.put(key.as_bytes(), Bytes::from(unique), Some(&got.context)).await;
            }
            12..=13 => {
                let key = format!("reg-{}", rng.random_range(0..REGISTERS));
                let Ok(got) = c.get_with(key.as_bytes(), read).await else { return };
                let _ = c.delete(key.as_bytes(), Some(&got.context)).await;
            }
            14..=16 => {
                let key = format!("blind-{}", rng.random_range(0..BLIND));
                let _ = c.put(key.as_bytes(), Bytes::from(unique), None).await;
            }
            _ => {
                let key = match rng.random_range(0..3) {
                    0 => format!("cart-{}", rng.random_range(0..CARTS)),
                    1 => format!("reg-{}", rng.random_range(0..REGISTERS)),
                    _ => format!("blind-{}", rng.random_range(0..BLIND)),
                };
                let _ = c.get_with(key.as_bytes(), read).await;
            }
        }
    }
}

impl Workload for MixedWorkload {
    fn run_client<'a>(
        &'a self,
        cluster: &'a Cluster,
        client: usize,
        ops: usize,
        mut rng: ChaCha8Rng,
    ) -> BoxFuture<'a> {
        Box::pin(async move {
            let think = super::HORIZON.as_millis() as u64 * 2 / ops.max(1) as u64;
            for op in 0..ops {
                tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..=think))).await;
                MixedWorkload::op(cluster, client, op, &mut rng).await;
            }
        })
    }

    fn set_union(&self, key: &[u8]) -> bool {
        key.starts_with(b"cart-")
    }
}
