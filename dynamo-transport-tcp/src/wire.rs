//! The wire format and the two halves of a connection's I/O.
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

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

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
/// Initial capacity of a connection's read buffer.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// One frame to send.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) id: u64,
    pub(crate) body: Bytes,
}

/// Splits the byte stream into `(id, body)` frames.
///
/// The length prefix is checked against the limit before any buffer is
/// reserved for the body, so a bogus prefix costs nothing but the connection.
pub(crate) struct FrameCodec {
    inner: LengthDelimitedCodec,
}

impl FrameCodec {
    /// A codec accepting bodies of at most `max_body` bytes.
    pub(crate) fn new(max_body: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_type::<u32>()
            .max_frame_length(max_body + ID_LEN)
            .new_codec();
        FrameCodec { inner }
    }
}

impl Decoder for FrameCodec {
    type Item = (u64, Bytes);
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, io::Error> {
        let Some(mut frame) = self.inner.decode(src)? else {
            return Ok(None);
        };
        if frame.len() < ID_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {} bytes lacks its {ID_LEN}-byte request id", frame.len()),
            ));
        }
        let id = frame.get_u64();
        Ok(Some((id, frame.freeze())))
    }
}

/// Writes the frames queued on `rx` until the queue closes or a write fails.
///
/// Whatever is queued when the task runs goes out in one batch: the frames
/// are gathered in one buffer and written with one system call (up to
/// [`BATCH_BYTES`] at a time). TCP sockets are unbuffered in tokio, so the
/// write is the flush.
///
/// `busy` tells whether other requests are in flight on the connection. If
/// so, the writer yields once before writing: the tasks those requests wake
/// are likely runnable right now and about to queue frames, and letting
/// them run first turns many one-frame writes into one. A lone request is
/// written at once.
pub(crate) async fn write_frames(
    mut sink: OwnedWriteHalf,
    rx: &mut UnboundedReceiver<Outgoing>,
    busy: impl Fn() -> bool,
) -> io::Result<()> {
    let mut batch = BytesMut::with_capacity(BATCH_BYTES);
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
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32((body.len() + ID_LEN) as u32);
        b.put_u64(id);
        b.put_slice(body);
        b
    }

    #[test]
    fn decodes_frames_split_anywhere() {
        let mut wire = frame(7, b"hello");
        wire.extend_from_slice(&frame(ERROR_FLAG | 9, b""));
        let all = wire.freeze();
        for cut in 0..all.len() {
            let mut codec = FrameCodec::new(16);
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = Vec::new();
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&all[cut..]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(got, vec![(7, Bytes::from_static(b"hello")), (ERROR_FLAG | 9, Bytes::new())]);
        }
    }

    #[test]
    fn refuses_oversized_prefix_before_reserving() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::with_capacity(16);
        buf.put_u32(u32::MAX);
        let cap = buf.capacity();
        assert!(codec.decode(&mut buf).is_err());
        assert_eq!(buf.capacity(), cap);
        // The limit counts the body: 16 bytes pass, 17 do not.
        assert!(FrameCodec::new(16).decode(&mut frame(1, &[0; 16])).unwrap().is_some());
        assert!(FrameCodec::new(16).decode(&mut frame(1, &[0; 17])).is_err());
    }

    #[test]
    fn refuses_frame_without_id() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(b"abc");
        assert!(FrameCodec::new(16).decode(&mut buf).is_err());
    }
}
