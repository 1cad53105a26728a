//! The wire format of one request stream.
//!
//! Every call opens its own Yamux stream, negotiated as [`PROTOCOL`]. The
//! caller writes the request and closes its half of the stream; the server
//! writes one reply and closes the stream.
//!
//! ```text
//! request:  len: u32 BE | body: len bytes                 (len <= max_frame)
//! reply:    tag: u8     | len: u32 BE | body: len bytes
//!           tag 0: body is the handler's response frame   (len <= max_frame)
//!           tag 1: body is a UTF-8 refusal reason         (len <= MAX_REASON)
//! ```
//!
//! Lengths are checked against the limit before any buffer is reserved, and
//! a body's buffer grows with the bytes that actually arrive, so a peer
//! announcing a large frame and then stalling costs no memory. Any breach of
//! the format is an [`io::Error`]: libp2p drops that one stream and reports
//! the failure on it; the connection and its other streams carry on.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;

/// The protocol every request stream is negotiated as.
pub(crate) const PROTOCOL: StreamProtocol = StreamProtocol::new("/dynamo/frame/1");

/// Longest refusal reason carried, in bytes; longer ones are cut.
pub(crate) const MAX_REASON: usize = 1024;

const TAG_FRAME: u8 = 0;
const TAG_REFUSED: u8 = 1;

/// Bodies up to this size are copied behind their header and written in
/// one call; larger ones go out as header, then body.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Initial buffer reserved for an incoming body; it grows as bytes arrive.
const INITIAL_READ_RESERVE: usize = 64 * 1024;

/// What a server sends back for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The handler's response frame.
    Frame(Bytes),
    /// The server did not run the request (not serving yet) or may not send
    /// the handler's response (over its frame limit); the reason says which.
    Refused(String),
}

impl Reply {
    /// A refusal, with the reason cut to [`MAX_REASON`] bytes on a
    /// character boundary.
    pub(crate) fn refused(reason: impl Into<String>) -> Reply {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Reply::Refused(reason)
    }
}

/// Length-prefixed frames with a size limit, both directions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec refusing bodies over `max_frame` bytes, which must fit the
    /// `u32` length prefix (the config checks it).
    pub(crate) fn new(max_frame: usize) -> FrameCodec {
        FrameCodec { max_frame }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Gives an end-of-stream error a message saying where it happened.
fn ended(e: io::Error, msg: &str) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(io::ErrorKind::UnexpectedEof, msg.to_owned())
    } else {
        e
    }
}

/// Reads a `u32` length, refuses it over `max`, then reads that many bytes.
async fn read_body<T>(io: &mut T, max: usize, what: &str) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix)
        .await
        .map_err(|e| ended(e, &format!("{what} ended within its length prefix")))?;
    let len = u32::from_be_bytes(prefix);
    let len_usize = usize::try_from(len).map_err(|_| invalid(format!("{what} length {len} overflows")))?;
    if len_usize > max {
        return Err(invalid(format!("{what} of {len} bytes exceeds the limit of {max} bytes")));
    }
    let mut body = Vec::with_capacity(len_usize.min(INITIAL_READ_RESERVE));
    let got = io.take(u64::from(len)).read_to_end(&mut body).await?;
    if got != len_usize {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what} truncated: {got} of {len} bytes"),
        ));
    }
    Ok(body)
}

/// Writes `header` then `body`, in one write when the body is small.
async fn write_parts<T>(io: &mut T, header: &[u8], body: &[u8]) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    if body.len() <= COALESCE_LIMIT {
        let mut buf = Vec::with_capacity(header.len() + body.len());
        buf.extend_from_slice(header);
        buf.extend_from_slice(body);
        io.write_all(&buf).await?;
    } else {
        io.write_all(header).await?;
        io.write_all(body).await?;
    }
    io.flush().await
}

fn length_prefix(len: usize, max: usize, what: &str) -> io::Result<[u8; 4]> {
    if len > max {
        return Err(invalid(format!("{what} of {len} bytes exceeds the limit of {max} bytes")));
    }
    let len = u32::try_from(len).map_err(|_| invalid(format!("{what} of {len} bytes overflows u32")))?;
    Ok(len.to_be_bytes())
}

impl Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Bytes;
    type Response = Reply;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Bytes>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_body(io, self.max_frame, "request").await.map(Bytes::from)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Reply>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut tag = [0u8; 1];
        io.read_exact(&mut tag).await.map_err(|e| ended(e, "the stream ended without a reply"))?;
        match tag[0] {
            TAG_FRAME => {
                read_body(io, self.max_frame, "response").await.map(|b| Reply::Frame(Bytes::from(b)))
            }
            TAG_REFUSED => {
                let reason = read_body(io, MAX_REASON, "refusal reason").await?;
                Ok(Reply::Refused(String::from_utf8_lossy(&reason).into_owned()))
            }
            other => Err(invalid(format!("unknown reply tag {other}"))),
        }
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Bytes) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let prefix = length_prefix(req.len(), self.max_frame, "request")?;
        write_parts(io, &prefix, &req).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Reply) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let (tag, body, max, what) = match &res {
            Reply::Frame(frame) => (TAG_FRAME, frame.as_ref(), self.max_frame, "response"),
            Reply::Refused(reason) => (TAG_REFUSED, reason.as_bytes(), MAX_REASON, "refusal reason"),
        };
        let prefix = length_prefix(body.len(), max, what)?;
        let header = [tag, prefix[0], prefix[1], prefix[2], prefix[3]];
        write_parts(io, &header, body).await
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::io::Cursor;

    use super::*;

    const MAX: usize = 1000;

    fn codec() -> FrameCodec {
        FrameCodec::new(MAX)
    }

    fn request_bytes(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        block_on(codec().write_request(&PROTOCOL, &mut out, Bytes::copy_from_slice(body))).unwrap();
        out
    }

    fn response_bytes(reply: Reply) -> Vec<u8> {
        let mut out = Vec::new();
        block_on(codec().write_response(&PROTOCOL, &mut out, reply)).unwrap();
        out
    }

    fn read_request(wire: &[u8]) -> io::Result<Bytes> {
        block_on(codec().read_request(&PROTOCOL, &mut Cursor::new(wire)))
    }

    fn read_response(wire: &[u8]) -> io::Result<Reply> {
        block_on(codec().read_response(&PROTOCOL, &mut Cursor::new(wire)))
    }

    #[test]
    fn requests_round_trip() {
        for body in [&b""[..], b"x", &[7u8; MAX], &[1u8; 500]] {
            let wire = request_bytes(body);
            assert_eq!(wire.len(), 4 + body.len());
            assert_eq!(read_request(&wire).unwrap(), body);
        }
    }

    #[test]
    fn large_bodies_are_written_in_two_parts_and_read_back() {
        let max = 3 * COALESCE_LIMIT;
        let body = Bytes::from(vec![9u8; max]);
        let mut out = Vec::new();
        block_on(FrameCodec::new(max).write_request(&PROTOCOL, &mut out, body.clone())).unwrap();
        let got = block_on(FrameCodec::new(max).read_request(&PROTOCOL, &mut Cursor::new(&out))).unwrap();
        assert_eq!(got, body);
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Frame(Bytes::new()),
            Reply::Frame(Bytes::from(vec![3u8; MAX])),
            Reply::Refused("not serving yet".into()),
            Reply::Refused(String::new()),
        ] {
            assert_eq!(read_response(&response_bytes(reply.clone())).unwrap(), reply);
        }
    }

    #[test]
    fn oversize_frames_are_refused_on_write() {
        let mut out = Vec::new();
        let err = block_on(codec().write_request(&PROTOCOL, &mut out, Bytes::from(vec![0u8; MAX + 1])))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(out.is_empty(), "nothing is written for a refused frame");
        let err =
            block_on(codec().write_response(&PROTOCOL, &mut out, Reply::Frame(vec![0u8; MAX + 1].into())))
                .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(out.is_empty());
    }

    #[test]
    fn oversize_length_prefixes_are_refused_before_reading_the_body() {
        // Only the prefix is there: the limit check must come before any
        // attempt to read (or reserve) the announced body.
        let wire = ((MAX + 1) as u32).to_be_bytes();
        let err = read_request(&wire).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        let huge = u32::MAX.to_be_bytes();
        assert_eq!(read_request(&huge).unwrap_err().kind(), io::ErrorKind::InvalidData);

        let mut reply = vec![TAG_FRAME];
        reply.extend_from_slice(&((MAX + 1) as u32).to_be_bytes());
        assert_eq!(read_response(&reply).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut reason = vec![TAG_REFUSED];
        reason.extend_from_slice(&((MAX_REASON + 1) as u32).to_be_bytes());
        assert_eq!(read_response(&reason).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let wire = request_bytes(b"hello world");
        for cut in 0..wire.len() {
            let err = read_request(&wire[..cut]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
        let wire = response_bytes(Reply::Frame(Bytes::from_static(b"hello world")));
        for cut in 0..wire.len() {
            assert_eq!(read_response(&wire[..cut]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn unknown_reply_tags_are_an_error() {
        let err = read_response(&[7, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn refusal_reasons_are_cut_to_the_limit_on_a_char_boundary() {
        let Reply::Refused(r) = Reply::refused("é".repeat(MAX_REASON)) else { unreachable!() };
        assert!(r.len() <= MAX_REASON && r.len() >= MAX_REASON - 1);
        assert!(r.chars().all(|c| c == 'é'));
        let wire = response_bytes(Reply::Refused(r.clone()));
        assert_eq!(read_response(&wire).unwrap(), Reply::Refused(r));
    }

    #[test]
    fn invalid_utf8_in_a_reason_does_not_fail() {
        let wire = [TAG_REFUSED, 0, 0, 0, 2, 0xff, 0xfe];
        assert!(matches!(read_response(&wire).unwrap(), Reply::Refused(_)));
    }
}
