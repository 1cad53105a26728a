//! The shopping cart of the Dynamo paper, with its own reconciler, on an
//! in-process cluster.
//!
//! A cart is a set of items. When a partition lets two sides of the
//! cluster update the same cart, the store keeps both versions as
//! siblings; the `cart-union` reconciler ([`dynamo_examples::cart`])
//! merges them into one cart on read, so no "add to cart" is ever lost.
//! Writing the merged cart back with the read's context collapses the
//! siblings.
//!
//! Run it with `cargo run --example shopping_cart`. It shows how a
//! reconciler plugin is used: register it in a [`ReconcilerRegistry`] and
//! select it by name. `cart_server.rs` serves the same reconciler over
//! HTTP.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use dynamo_core::prelude::*;
use dynamo_examples::cart::{decode, encode, Cart, CartUnion};
use dynamo_testkit::Cluster;

/// Adds an item: read the cart, add, write back with the read's context.
/// "Add to cart" must always succeed: where no replica of the cart can be
/// read (a node cut off from every owner), the item is written alone,
/// without a context, and becomes a sibling that `cart-union` merges.
async fn add_item(cluster: &Cluster, via: usize, item: &str) -> Result<()> {
    let client = cluster.client(via);
    let (mut cart, context) = match client.get(b"cart:alice").await {
        Ok(read) => (read.values.iter().flat_map(|v| decode(v)).collect::<Cart>(), Some(read.context)),
        Err(e) => {
            println!("  node {via}: cannot read the cart ({e}); adding {item} on its own");
            (Cart::new(), None)
        }
    };
    cart.insert(item.to_string());
    client.put(b"cart:alice", encode(&cart), context.as_ref()).await?;
    println!("  node {via}: added {item:<8} -> cart seen there: {cart:?}");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<ExitCode> {
    // Configuration names the reconciler; the registry resolves the name.
    let mut registry = ReconcilerRegistry::with_builtins();
    registry.register(Arc::new(CartUnion))?;
    let reconciler = registry.get("cart-union")?;
    println!("reconcilers available: {:?}; using {:?}", registry.names(), reconciler.name());

    let cluster = Cluster::builder().nodes(5).n(3).r(2).w(2).reconciler(reconciler).build().await?;
    println!(
        "5-node cluster, N=3 R=2 W=2; cart:alice lives on nodes {:?}",
        cluster.preference_list(b"cart:alice")
    );

    add_item(&cluster, 0, "milk").await?;

    println!("partition: nodes [0, 1] | [2, 3, 4]");
    cluster.partition(&[0, 1], &[2, 3, 4]);
    add_item(&cluster, 0, "eggs").await?;
    add_item(&cluster, 1, "coffee").await?;
    add_item(&cluster, 3, "bread").await?;
    add_item(&cluster, 4, "apples").await?;

    println!("heal");
    cluster.heal();
    cluster.wait_converged(Duration::from_secs(30)).await.map_err(Error::Protocol)?;

    let read = cluster.client(2).get(b"cart:alice").await?;
    let cart = decode(&read.values[0]);
    println!("stored siblings: {}, merged cart: {cart:?}", read.siblings.len());
    let expected: Cart = ["milk", "eggs", "coffee", "bread", "apples"].map(String::from).into();

    // Write the merged cart back: the read's context covers every sibling.
    cluster.client(2).put(b"cart:alice", encode(&cart), Some(&read.context)).await?;
    let after = cluster.client(4).get(b"cart:alice").await?;
    println!(
        "after writing it back: {} sibling(s), cart {:?}",
        after.siblings.len(),
        decode(&after.values[0])
    );

    cluster.shutdown().await;
    if cart == expected && after.siblings.len() == 1 {
        println!("no add was lost");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("LOST ITEMS: expected {expected:?}");
        Ok(ExitCode::FAILURE)
    }
}
