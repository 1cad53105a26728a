//! Checks of a request at the edge, before anything is stored: the same
//! limits whether the request comes from a client or a peer.

use std::time::Duration;

use bytes::Bytes;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::transport::protocol::WriteRequest;

/// A key is not empty and not over `max_key_len` (inclusive).
pub(crate) fn check_key(config: &Config, key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if key.len() > config.max_key_len {
        return Err(Error::KeyTooLong { len: key.len(), max: config.max_key_len });
    }
    Ok(())
}

/// A value is not over `max_value_size` (inclusive).
pub(crate) fn check_value(config: &Config, value: Option<&Bytes>) -> Result<()> {
    match value {
        Some(v) if v.len() > config.max_value_size => {
            Err(Error::ValueTooLarge { size: v.len(), max: config.max_value_size })
        }
        _ => Ok(()),
    }
}

/// An R or W (`name`) within `1..=N`.
pub(crate) fn check_quorum(config: &Config, name: &str, value: usize) -> Result<usize> {
    if value == 0 || value > config.n {
        return Err(Error::InvalidQuorum { name: name.into(), value, n: config.n });
    }
    Ok(value)
}

/// A write: key, value, W and context.
pub(crate) fn check_write(config: &Config, req: &WriteRequest) -> Result<()> {
    check_key(config, &req.key)?;
    check_value(config, req.value.as_ref())?;
    check_quorum(config, "w", req.w)?;
    if let Some(t) = &req.content_type {
        check_content_type(t)?;
    }
    if let Some(c) = &req.context {
        c.validate().map_err(|e| Error::InvalidContext(e.to_string()))?;
    }
    Ok(())
}

/// The longest media type kept with a value, in bytes.
pub(crate) const MAX_CONTENT_TYPE: usize = 255;

/// A media type: at most [`MAX_CONTENT_TYPE`] bytes of visible ASCII
/// (spaces allowed, as in `text/plain; charset=utf-8`).
pub(crate) fn check_content_type(t: &str) -> Result<()> {
    if t.len() > MAX_CONTENT_TYPE {
        return Err(Error::InvalidContentType(format!("{} bytes, more than {MAX_CONTENT_TYPE}", t.len())));
    }
    if let Some(c) = t.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(Error::InvalidContentType(format!("character {c:?} is not visible ASCII")));
    }
    Ok(())
}

/// A peer's requested timeout, clamped to `request_timeout_ms`: a peer
/// cannot make a node wait longer than its own clients may.
pub(crate) fn clamp_timeout(config: &Config, timeout_ms: u64) -> Duration {
    Duration::from_millis(timeout_ms.min(config.request_timeout_ms))
}
