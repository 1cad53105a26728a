//! Splits the byte stream into `(id, body)` frames without ever allocating
//! for bytes that have not arrived.
//!
//! The length prefix is checked against the limit as soon as its four bytes
//! are in, before anything else. A frame that is already whole in the read
//! buffer is split off it without a copy (the hot path: small frames arrive
//! whole). A frame larger than [`READ_BUFFER`] that is still arriving is
//! assembled from the read buffer's contents: each time the buffer fills,
//! its bytes move to the frame's list of parts and the reader starts a new
//! buffer, so what the frame holds is what was received plus at most one
//! buffer. When the last byte arrives the parts are copied once into the
//! frame's body. The decoder itself never reserves; only the reader grows
//! its buffer, by at most [`READ_BUFFER`] at a time.

use bytes::{Buf, Bytes, BytesMut};

use crate::wire::{ID_LEN, READ_BUFFER};

/// Bytes of the length prefix.
const PREFIX_LEN: usize = 4;
/// Bytes of the length prefix plus the id.
const HEADER_LEN: usize = PREFIX_LEN + ID_LEN;

/// A frame that breaks the format. Each closes its connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// The length prefix announces more than the limit allows.
    #[error("frame of {len} bytes (id included) exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length, id included.
        len: usize,
        /// The largest length allowed, id included.
        max: usize,
    },
    /// The frame is too short to hold its request id.
    #[error("frame of {len} bytes lacks its {ID_LEN}-byte request id")]
    NoId {
        /// The announced length.
        len: usize,
    },
}

/// A frame too large for the read buffer, whose body is still arriving.
struct Partial {
    id: u64,
    /// Body length announced (without the id).
    len: usize,
    /// Body bytes received so far, in order; each was a full read buffer.
    parts: Vec<Bytes>,
    /// Sum of the parts' lengths.
    got: usize,
}

/// The decoder of one connection's incoming frames.
pub(crate) struct FrameCodec {
    /// Largest length prefix accepted: the body limit plus the id.
    max_len: usize,
    partial: Option<Partial>,
}

impl FrameCodec {
    /// A decoder accepting bodies of at most `max_body` bytes.
    pub(crate) fn new(max_body: usize) -> Self {
        FrameCodec { max_len: max_body.saturating_add(ID_LEN), partial: None }
    }

    /// Whether part of a frame has been taken out of the buffer: the frame
    /// has started even if the buffer is empty.
    pub(crate) fn in_frame(&self) -> bool {
        self.partial.is_some()
    }

    /// Bytes of the frame in progress held outside the read buffer.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.got)
    }

    /// The next whole frame, taking its bytes out of `src`; `None` while
    /// more bytes are needed. Never reserves capacity in `src`.
    ///
    /// # Errors
    /// A [`FrameError`] when the length prefix is over the limit or too short
    /// for the id; the connection must then be closed (the stream can no
    /// longer be split into frames).
    pub(crate) fn decode(&mut self, src: &mut BytesMut) -> Result<Option<(u64, Bytes)>, FrameError> {
        if self.partial.is_some() {
            return Ok(self.continue_partial(src));
        }
        let Some(prefix) = src.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge { len, max: self.max_len });
        }
        if len < ID_LEN {
            return Err(FrameError::NoId { len });
        }
        let total = PREFIX_LEN + len;
        if src.len() >= total {
            // Whole: split it off, no copy.
            src.advance(PREFIX_LEN);
            let mut frame = src.split_to(len);
            let id = frame.get_u64();
            return Ok(Some((id, frame.freeze())));
        }
        if total <= READ_BUFFER || src.len() < HEADER_LEN {
            // A small frame completes in the read buffer (the reader grows
            // it by at most READ_BUFFER when full); a large one needs its id.
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        let id = src.get_u64();
        self.partial = Some(Partial { id, len: len - ID_LEN, parts: Vec::new(), got: 0 });
        Ok(self.continue_partial(src))
    }

    /// Moves the bytes of the large frame in progress out of `src`: all of
    /// them once `src` is full, or the rest of the frame once it is there.
    fn continue_partial(&mut self, src: &mut BytesMut) -> Option<(u64, Bytes)> {
        let partial = self.partial.as_mut()?;
        let missing = partial.len - partial.got;
        if src.len() < missing {
            // Full buffers only, so the parts stay few and large; the reader
            // then starts a new buffer.
            if !src.is_empty() && src.len() == src.capacity() {
                partial.got += src.len();
                partial.parts.push(src.split().freeze());
            }
            return None;
        }
        let tail = src.split_to(missing);
        let Partial { id, len, parts, .. } = self.partial.take()?;
        if parts.is_empty() {
            return Some((id, tail.freeze()));
        }
        let mut body = BytesMut::with_capacity(len);
        for part in &parts {
            body.extend_from_slice(part);
        }
        body.extend_from_slice(&tail);
        Some((id, body.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::wire::ERROR_FLAG;

    fn frame(id: u64, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32((body.len() + ID_LEN) as u32);
        b.put_u64(id);
        b.put_slice(body);
        b
    }

    /// Feeds `wire` to a decoder through a read buffer that grows like the
    /// reader's (by `READ_BUFFER` once full), `step` bytes per read, and
    /// returns the frames decoded.
    fn decode_in_steps(max_body: usize, wire: &[u8], step: usize) -> Vec<(u64, Bytes)> {
        let mut codec = FrameCodec::new(max_body);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(step) {
            let mut piece = piece;
            while !piece.is_empty() {
                if buf.len() == buf.capacity() {
                    buf.reserve(READ_BUFFER);
                }
                let n = piece.len().min(buf.capacity() - buf.len());
                buf.extend_from_slice(&piece[..n]);
                piece = &piece[n..];
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
        }
        assert!(buf.is_empty() && !codec.in_frame(), "bytes left over");
        got
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
    fn large_frames_between_small_ones_decode_at_any_read_size() {
        let large: Vec<u8> = (0..3 * READ_BUFFER + 17).map(|i| i as u8).collect();
        let mut wire = frame(1, b"a");
        wire.extend_from_slice(&frame(2, &large));
        wire.extend_from_slice(&frame(3, b"b"));
        wire.extend_from_slice(&frame(4, &large[..READ_BUFFER]));
        let expected = vec![
            (1, Bytes::from_static(b"a")),
            (2, Bytes::from(large.clone())),
            (3, Bytes::from_static(b"b")),
            (4, Bytes::copy_from_slice(&large[..READ_BUFFER])),
        ];
        for step in [1, 7, 4096, READ_BUFFER - 3, READ_BUFFER, wire.len()] {
            assert_eq!(decode_in_steps(large.len(), &wire, step), expected, "step {step}");
        }
    }

    /// The flaw this decoder replaces: a 12-byte header announcing 16 MiB
    /// made the codec reserve 16 MiB at once.
    #[test]
    fn an_announced_length_reserves_nothing() {
        let mut codec = FrameCodec::new(16 << 20);
        let mut buf = BytesMut::new();
        buf.put_u32((16 << 20) as u32 + ID_LEN as u32);
        buf.put_u64(1);
        buf.put_slice(b"abc");
        let received = buf.len();
        let cap = buf.capacity();
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() <= cap.max(received + READ_BUFFER), "capacity {}", buf.capacity());
        assert!(codec.in_frame());
        assert_eq!(codec.held() + buf.len(), received - HEADER_LEN);
    }

    #[test]
    fn refuses_oversized_prefix_before_reserving() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::with_capacity(16);
        buf.put_u32(u32::MAX);
        let cap = buf.capacity();
        assert_eq!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { len: u32::MAX as usize, max: 16 + ID_LEN })
        );
        assert_eq!(buf.capacity(), cap);
        // The limit counts the body: 16 bytes pass, 17 do not.
        assert!(FrameCodec::new(16).decode(&mut frame(1, &[0; 16])).unwrap().is_some());
        assert!(FrameCodec::new(16).decode(&mut frame(1, &[0; 17])).is_err());
        // Refused on the prefix alone, before the rest of the header.
        let mut prefix = BytesMut::from(&((17 + ID_LEN) as u32).to_be_bytes()[..]);
        assert!(FrameCodec::new(16).decode(&mut prefix).is_err());
    }

    #[test]
    fn refuses_frame_without_id() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        assert_eq!(FrameCodec::new(16).decode(&mut buf), Err(FrameError::NoId { len: 3 }));
    }
}
