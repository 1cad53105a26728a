//! Code the examples share: the shopping cart of the Dynamo paper, with
//! its own reconciler ([`cart`]). `shopping_cart.rs` runs it on an
//! in-process cluster; `cart_server.rs` serves it over HTTP as a
//! `dynamo-server` binary of its own; [`cart_sweep`] runs it under the
//! deterministic simulation (`cart_sweep.rs`, and a test).

pub mod cart;
pub mod cart_sweep;
