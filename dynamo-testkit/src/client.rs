//! A client handle that records every operation in the cluster's history.

use bytes::Bytes;
use dynamo_core::causality::Context;
use dynamo_core::node::{GetResult, Node, ReadOptions, WriteOptions};
use dynamo_core::{Error, Result};

use crate::history::{Event, History, Op};

/// Sends requests to one node and records them in a [`History`].
#[derive(Debug, Clone)]
pub struct Client {
    id: usize,
    node: Option<Node>,
    history: History,
}

impl Client {
    pub(crate) fn new(id: usize, node: Option<Node>, history: History) -> Self {
        Client { id, node, history }
    }

    fn node(&self) -> Result<&Node> {
        self.node.as_ref().ok_or(Error::ShuttingDown)
    }

    fn record<T>(&self, key: &[u8], op: Op, invoked: u64, result: &Result<T>) {
        let completed = self.history.tick();
        self.history.record(Event {
            client: self.id,
            key: Bytes::copy_from_slice(key),
            op,
            invoked,
            completed,
            ok: result.is_ok(),
            error: result.as_ref().err().cloned(),
        });
    }

    /// Reads `key` with the node's default R.
    ///
    /// # Errors
    /// As [`Node::get`].
    pub async fn get(&self, key: &[u8]) -> Result<GetResult> {
        self.get_with(key, ReadOptions::default()).await
    }

    /// Reads `key` with options.
    ///
    /// # Errors
    /// As [`Node::get`].
    pub async fn get_with(&self, key: &[u8], opts: ReadOptions) -> Result<GetResult> {
        let invoked = self.history.tick();
        let result = self.node()?.get(key, opts).await;
        let op = match &result {
            Ok(r) => Op::Get { values: r.values.clone(), context: r.context.encode(key) },
            Err(_) => Op::Get { values: Vec::new(), context: Vec::new() },
        };
        self.record(key, op, invoked, &result);
        result
    }

    /// Writes `value` with the node's default W.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn put(&self, key: &[u8], value: Bytes, context: Option<&Context>) -> Result<Context> {
        self.put_with(key, value, context, WriteOptions::default()).await
    }

    /// Writes `value` with options.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn put_with(
        &self,
        key: &[u8],
        value: Bytes,
        context: Option<&Context>,
        opts: WriteOptions,
    ) -> Result<Context> {
        let invoked = self.history.tick();
        let result = self.node()?.put(key, value.clone(), context, opts).await;
        self.record(key, Op::Put { value }, invoked, &result);
        result
    }

    /// Deletes `key` with the node's default W.
    ///
    /// # Errors
    /// As [`Node::delete`].
    pub async fn delete(&self, key: &[u8], context: Option<&Context>) -> Result<Context> {
        let invoked = self.history.tick();
        let result = self.node()?.delete(key, context, WriteOptions::default()).await;
        self.record(key, Op::Delete { context: context.map(|c| c.encode(key)) }, invoked, &result);
        result
    }
}
