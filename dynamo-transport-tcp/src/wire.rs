//! The wire format, and writing frames (the reading side is in
//! [`crate::reader`] and [`crate::decode`]).
//!
//! Every message, either way, is one frame:
//!
//! ```text
//! +----------------+-------------------+------------------+
//! | len: u32 BE    | id: u64 BE        | body: len-8 bytes|
//! +----------------+-------------------+------------------+
//! ```
//!
//! `len` counts the id and the body. A request's `id` is chosen by the
//! caller, unique among the calls in flight on its connection; the response
//! echoes it, so responses may come back in any order. A response whose id
//! has [`ERROR_FLAG`] set carries no handler output but a UTF-8 reason why the
//! server could not answer (its response exceeded the frame limit).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

/// Bytes of the request id that starts every frame body.
pub(crate) const ID_LEN: usize = 8;
/// Bytes of the length prefix plus the id.
const HEADER_LEN: usize = 4 + ID_LEN;
/// Set in a response id when the server answers with an error reason.
pub(crate) const ERROR_FLAG: u64 = 1 << 63;
/// Bodies up to this size are copied into the write batch; larger ones are
/// written from their own buffer with a vectored write, without a copy.
const INLINE_BODY: usize = 8 * 1024;
/// A write batch is sent once it reaches this size, even if more is queued.
const BATCH_BYTES: usize = 64 * 1024;
/// Capacity of a connection's read buffer once traffic flows, and the most
/// it ever grows at once: what a connection holds beyond the bytes it
/// received. Frames up to this size (prefix included) complete in the
/// buffer; larger ones are assembled as their bytes arrive.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// One frame to send.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) id: u64,
    pub(crate) body: Bytes,
}

/// Writes the frames queued on `rx` until the queue closes or a write fails.
///
/// Whatever is queued when the task runs goes out in one batch: the frames
/// are gathered in one buffer and written with one system call (up to
/// [`BATCH_BYTES`] at a time), then flushed: a no-op on a TCP socket, which
/// tokio does not buffer; over TLS it sends what the session still holds.
///
/// `busy` tells whether other requests are in flight on the connection. If
/// so, the writer yields once before writing: the tasks those requests wake
/// are likely runnable right now and about to queue frames, and letting
/// them run first turns many one-frame writes into one. A lone request is
/// written at once.
///
/// `written` is bumped after each batch: the connection's idle timer sees
/// traffic in this direction by it. The batch buffer starts empty and grows
/// with what is written, so an idle connection holds none.
pub(crate) async fn write_frames(
    mut sink: impl AsyncWrite + Unpin,
    rx: &mut UnboundedReceiver<Outgoing>,
    busy: impl Fn() -> bool,
    written: &AtomicU64,
) -> io::Result<()> {
    let mut batch = BytesMut::new();
    while let Some(first) = rx.recv().await {
        if busy() {
            tokio::task::yield_now().await;
        }
        let mut next = Some(first);
        while let Some(Outgoing { id, body }) = next {
            batch.reserve(HEADER_LEN);
            batch.put_u32((body.len() + ID_LEN) as u32);
            batch.put_u64(id);
            if body.len() <= INLINE_BODY {
                batch.extend_from_slice(&body);
            } else {
                sink.write_all_buf(&mut (&mut batch).chain(body)).await?;
                batch.clear();
            }
            if batch.len() >= BATCH_BYTES {
                sink.write_all(&batch).await?;
                batch.clear();
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            sink.write_all(&batch).await?;
            batch.clear();
        }
        sink.flush().await?;
        written.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
