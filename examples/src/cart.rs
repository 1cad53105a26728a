//! The shopping cart of the Dynamo paper, and the `cart-union` reconciler
//! that merges concurrent versions of a cart so no "add to cart" is lost.
//!
//! A cart is a set of items, stored as text, one item per line (so `curl`
//! and the shell can read and write carts). When a partition lets two
//! sides of the cluster update the same cart, the store keeps both
//! versions as siblings; [`CartUnion`] merges them into one cart on read.
//! Writing the merged cart back with the read's context collapses them.
//!
//! It is also the model for a reconciler plugin: implement [`Reconciler`],
//! register it by name, and select it in the configuration.

use std::collections::BTreeSet;

use bytes::Bytes;
use dynamo_core::causality::Sibling;
use dynamo_core::reconcile::{Reconciler, Resolution};

/// A cart: the set of items in it.
pub type Cart = BTreeSet<String>;

/// A cart as stored: its items, sorted, one per line. An item is one line
/// of text (a newline in an item would split it in two).
pub fn encode(cart: &Cart) -> Bytes {
    let mut text = String::new();
    for item in cart {
        text.push_str(item);
        text.push('\n');
    }
    Bytes::from(text)
}

/// A stored cart: one item per non-empty line. Bytes that are not UTF-8
/// (written by another program) are read lossily, never refused.
pub fn decode(bytes: &[u8]) -> Cart {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// Merges concurrent carts by union: an item added on any side stays.
/// Registered as `cart-union`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CartUnion;

impl Reconciler for CartUnion {
    fn name(&self) -> &str {
        "cart-union"
    }

    fn reconcile(&self, _key: &[u8], siblings: &[Sibling]) -> Resolution {
        let merged: Cart = siblings.iter().filter_map(|s| s.value.as_deref()).flat_map(decode).collect();
        Resolution::Merged(encode(&merged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carts_round_trip_as_lines() {
        let cart: Cart = ["milk", "eggs"].map(String::from).into();
        assert_eq!(&encode(&cart)[..], b"eggs\nmilk\n");
        assert_eq!(decode(&encode(&cart)), cart);
        assert_eq!(decode(b"milk\r\n\n  eggs \n"), cart);
        assert!(decode(&[0xff, 0xfe]).len() == 1);
    }
}
