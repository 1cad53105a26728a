//! The shopping cart under the deterministic simulation: shoppers add
//! items to a few carts (read, add, write back with the read's context)
//! while the simulation crashes nodes, partitions the network and delays
//! messages; the invariant is the paper's promise, that no "add to cart"
//! is ever lost.

use bytes::Bytes;
use dynamo_testkit::history::{Op, Violation};
use dynamo_testkit::simulation::{BoxFuture, Invariant, RunOutcome, Workload, HORIZON};
use dynamo_testkit::Cluster;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::cart::{decode, encode};

/// Shoppers adding items to three carts through random nodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shoppers;

impl Workload for Shoppers {
    fn run_client<'a>(
        &'a self,
        cluster: &'a Cluster,
        client: usize,
        ops: usize,
        mut rng: ChaCha8Rng,
    ) -> BoxFuture<'a> {
        Box::pin(async move {
            let think = HORIZON.as_millis() as u64 * 2 / ops.max(1) as u64;
            for op in 0..ops {
                tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..=think))).await;
                let shop = cluster.client(rng.random_range(0..cluster.len()));
                let key = format!("cart-{}", rng.random_range(0..3));
                // A failed read still lets the shopper add (always writeable):
                // the write is then concurrent with the cart, and the
                // cart-union reconciler merges them.
                let (mut cart, context): (crate::cart::Cart, _) = match shop.get(key.as_bytes()).await {
                    Ok(read) => (read.values.iter().flat_map(|v| decode(v)).collect(), Some(read.context)),
                    Err(_) => (Default::default(), None),
                };
                cart.insert(format!("shopper {client} item {op}"));
                let _ = shop.put(key.as_bytes(), encode(&cart), context.as_ref()).await;
            }
        })
    }

    fn set_union(&self, _key: &[u8]) -> bool {
        // Carts are text, not the testkit's set encoding: checked below.
        false
    }
}

/// Every item of every acknowledged cart write is in the final cart.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoItemLost;

impl Invariant for NoItemLost {
    fn name(&self) -> &str {
        "no-item-lost"
    }

    fn check(&self, outcome: &RunOutcome<'_>) -> Result<(), Violation> {
        for event in outcome.history.events().iter().filter(|e| e.ok) {
            let Op::Put { value } = &event.op else { continue };
            let now = outcome.finals.get(&event.key).map_or_else(Default::default, |vs: &Vec<Bytes>| {
                vs.iter().flat_map(|v| decode(v)).collect::<crate::cart::Cart>()
            });
            if let Some(lost) = decode(value).difference(&now).next() {
                return Err(Violation {
                    key: String::from_utf8_lossy(&event.key).into_owned(),
                    problem: format!("{lost:?}, added at t={}, is not in the final cart", event.completed),
                });
            }
        }
        Ok(())
    }
}
