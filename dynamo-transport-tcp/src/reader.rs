//! Reading one connection's frames, with its read and idle timeouts.
//!
//! The read buffer starts at [`FIRST_READ`] bytes, so a connection that never
//! sends costs a page, not a full buffer; once a read fills it, it grows to
//! [`READ_BUFFER`]. It is only ever grown when full, by at most
//! [`READ_BUFFER`], and the decoder never reserves: what a connection holds
//! is what it received plus one buffer, whatever its frames announce.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::decode::{FrameCodec, FrameError};
use crate::watchdog::{Timeouts, Verdict, Watchdog};
use crate::wire::READ_BUFFER;

/// Capacity of a connection's first read buffer.
const FIRST_READ: usize = 4 * 1024;

/// What a reader needs to know about the rest of its connection to tell
/// whether it is idle.
pub(crate) trait Traffic {
    /// Whether a request is in flight: being handled (serving side) or
    /// awaiting its response (calling side).
    fn busy(&self) -> bool;
    /// A count that changes whenever frames are written.
    fn written(&self) -> u64;
}

/// Why a connection stopped yielding frames.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// A frame broke the format.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// A frame started and was not whole within the read timeout.
    #[error("a frame was not whole within the read timeout of {0:?}")]
    Stalled(Duration),
    /// Nothing in flight and no frame either way for the idle timeout. The
    /// reader stays usable: the idle clock restarts.
    #[error("idle for {0:?}")]
    Idle(Duration),
}

/// The reading half of a connection, split into frames.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    codec: FrameCodec,
    watchdog: Watchdog,
    timeouts: Timeouts,
    /// Frames read so far (wrapping).
    frames: u64,
    /// A read has filled the buffer: later buffers are full size.
    grown: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of frames with bodies up to `max_body` bytes; its idle
    /// clock starts now.
    pub(crate) fn new(io: R, max_body: usize, timeouts: Timeouts) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            codec: FrameCodec::new(max_body),
            watchdog: Watchdog::new(timeouts),
            timeouts,
            frames: 0,
            grown: false,
        }
    }

    /// The next frame, `None` when the stream ends between frames.
    /// Cancel-safe: dropping the future loses no bytes.
    ///
    /// # Errors
    /// A [`ReadError`]; after any but [`ReadError::Idle`] the connection
    /// must be closed.
    pub(crate) async fn next(&mut self, traffic: &impl Traffic) -> Result<Option<(u64, Bytes)>, ReadError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                self.frames = self.frames.wrapping_add(1);
                if self.watchdog.in_frame() {
                    self.watchdog.frame_done();
                }
                return Ok(Some(frame));
            }
            let mid_frame = !self.buf.is_empty() || self.codec.in_frame();
            if mid_frame {
                self.watchdog.frame_started();
            }
            if self.buf.len() == self.buf.capacity() {
                self.buf.reserve(if self.grown { READ_BUFFER } else { FIRST_READ });
            }
            let room = self.buf.capacity() - self.buf.len();
            tokio::select! {
                biased;
                read = self.io.read_buf(&mut self.buf) => match read? {
                    0 if mid_frame => return Err(ReadError::Truncated),
                    0 => return Ok(None),
                    n => self.grown |= n == room,
                },
                () = self.watchdog.fired() => {
                    let activity = self.frames.wrapping_add(traffic.written());
                    match self.watchdog.judge(Instant::now(), activity, traffic.busy()) {
                        Verdict::Wait => {}
                        Verdict::Stalled => return Err(ReadError::Stalled(self.timeouts.read)),
                        Verdict::Idle => return Err(ReadError::Idle(self.timeouts.idle)),
                    }
                }
            }
        }
    }

    /// Bytes of buffer this reader holds: its read buffer's capacity plus
    /// the parts of a large frame in progress.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.buf.capacity() + self.codec.held()
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use futures::FutureExt;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::wire::ID_LEN;

    struct Quiet {
        busy: bool,
    }

    impl Traffic for Quiet {
        fn busy(&self) -> bool {
            self.busy
        }
        fn written(&self) -> u64 {
            0
        }
    }

    const LONG: Timeouts = Timeouts { read: Duration::from_secs(600), idle: Duration::from_secs(600) };
    const SHORT: Timeouts = Timeouts { read: Duration::from_millis(200), idle: Duration::from_millis(400) };

    fn header(id: u64, body_len: usize) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32((body_len + ID_LEN) as u32);
        b.put_u64(id);
        b
    }

    /// A peer announces a 16 MiB frame and sends it slowly: at every step the
    /// reader holds at most what arrived plus one read buffer, and the frame
    /// comes out whole at the end.
    #[tokio::test]
    async fn memory_grows_with_bytes_received_not_bytes_announced() {
        const ANNOUNCED: usize = 16 << 20;
        let (mut peer, stream) = tokio::io::duplex(256 * 1024);
        let mut reader = FrameReader::new(stream, ANNOUNCED, LONG);
        let quiet = Quiet { busy: false };
        let body: Vec<u8> = (0..ANNOUNCED).map(|i| (i % 251) as u8).collect();

        peer.write_all(&header(5, ANNOUNCED)).await.unwrap();
        let mut received = ID_LEN + 4;
        let mut sent = 0;
        // A few bytes first, then growing pieces.
        for piece in [3, 1000, 5000, 60_000, 70_000].into_iter().chain(std::iter::repeat(200_000)) {
            let piece = piece.min(ANNOUNCED - sent);
            if piece == 0 {
                break;
            }
            peer.write_all(&body[sent..sent + piece]).await.unwrap();
            sent += piece;
            received += piece;
            if sent < ANNOUNCED {
                // Unconstrained: the coop budget must not stop it before it
                // has read all there is.
                let polled = tokio::task::unconstrained(reader.next(&quiet)).now_or_never();
                assert!(polled.is_none(), "no frame before its last byte");
                assert!(
                    reader.held() <= received + READ_BUFFER,
                    "holds {} bytes after receiving {received}",
                    reader.held()
                );
            }
        }
        let (id, frame) = reader.next(&quiet).await.unwrap().unwrap();
        assert_eq!(id, 5);
        assert!(frame == body, "the frame is reassembled in order");
    }

    #[tokio::test]
    async fn a_silent_connection_holds_one_small_buffer() {
        let (_peer, stream) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(stream, 16 << 20, LONG);
        assert!(tokio::task::unconstrained(reader.next(&Quiet { busy: false })).now_or_never().is_none());
        assert!(reader.held() <= FIRST_READ, "{}", reader.held());
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_stalled_midway_fails_after_the_read_timeout() {
        for sent in [&header(1, 100)[..2], &header(1, 100)[..], &[&header(1, 100)[..], &[0u8; 50]].concat()] {
            let (mut peer, stream) = tokio::io::duplex(1024);
            let mut reader = FrameReader::new(stream, 1000, SHORT);
            peer.write_all(sent).await.unwrap();
            let start = Instant::now();
            let err = reader.next(&Quiet { busy: true }).await.unwrap_err();
            assert!(matches!(err, ReadError::Stalled(_)), "{err}");
            assert!(start.elapsed() >= SHORT.read, "stalled after {:?}", start.elapsed());
            assert!(start.elapsed() < SHORT.idle, "stalled after {:?}", start.elapsed());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_is_reported_unless_a_request_is_in_flight() {
        let (mut peer, stream) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(stream, 1000, SHORT);
        let busy = Quiet { busy: true };
        let waited = tokio::time::timeout(SHORT.idle * 5, reader.next(&busy)).await;
        assert!(waited.is_err(), "a request in flight is not idle: {waited:?}");

        let quiet = Quiet { busy: false };
        let mut frame = header(9, 1);
        frame.put_u8(b'x');
        peer.write_all(&frame).await.unwrap();
        assert_eq!(reader.next(&quiet).await.unwrap(), Some((9, Bytes::from_static(b"x"))));
        let start = Instant::now();
        let err = reader.next(&quiet).await.unwrap_err();
        assert!(matches!(err, ReadError::Idle(_)), "{err}");
        let idle = start.elapsed();
        assert!(idle >= SHORT.idle && idle <= SHORT.idle * 3 / 2, "idle after {idle:?}");
    }

    #[tokio::test]
    async fn the_end_of_the_stream_is_clean_only_between_frames() {
        let (peer, stream) = tokio::io::duplex(1024);
        drop(peer);
        assert!(FrameReader::new(stream, 1000, LONG).next(&Quiet { busy: false }).await.unwrap().is_none());
        let (mut peer, stream) = tokio::io::duplex(1024);
        peer.write_all(&header(1, 10)).await.unwrap();
        drop(peer);
        let err = FrameReader::new(stream, 1000, LONG).next(&Quiet { busy: false }).await.unwrap_err();
        assert!(matches!(err, ReadError::Truncated), "{err}");
    }
}
