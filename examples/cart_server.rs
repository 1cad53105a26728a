//! Your own server with your own reconciler: `dynamo-server`'s whole
//! command line, configuration and HTTP API, plus the shopping cart's
//! `cart-union` reconciler ([`dynamo_examples::cart`]).
//!
//! ```sh
//! cargo build --release -p dynamo-examples --example cart_server
//! target/release/examples/cart_server dev --reconciler cart-union
//! # concurrent carts written through two nodes come back merged:
//! curl -X PUT --data-binary 'milk' http://127.0.0.1:8001/kv/cart:alice
//! curl -X PUT --data-binary 'eggs' http://127.0.0.1:8002/kv/cart:alice
//! curl http://127.0.0.1:8003/kv/cart:alice      # eggs, milk: one value
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use dynamo_examples::cart::CartUnion;

fn main() -> ExitCode {
    dynamo_server::ServerBuilder::new().reconciler(Arc::new(CartUnion)).run()
}
