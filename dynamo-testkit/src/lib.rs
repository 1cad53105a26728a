//! Test kit for dynamo-core.
pub mod sim_net;
