//! Any `:authority` on the KMS socket. h2 refuses (RST_STREAM PROTOCOL_ERROR) every request whose
//! `:authority` is not an RFC 3986 authority, and clients that name the socket path there (Python
//! grpc and grpc-java for `unix:` targets, kube-apiserver before 1.32) do exactly that. The socket
//! is local and nothing here reads the authority, so the client→server bytes pass through
//! `Rewrite`, which re-encodes every header block and puts `localhost` in place of an authority h2
//! would refuse. Everything else (DATA, SETTINGS, WINDOW_UPDATE, ...) passes byte for byte, so
//! flow control, stream limits and message caps stay h2's and tonic's.
//!
//! HPACK state: the client's dynamic table is mirrored by one decoder per connection (every header
//! block is decoded in order); toward h2 every field is a literal without indexing, so h2's
//! dynamic table stays empty and cannot drift. Whatever cannot be decoded closes the connection.
//!
//! One more frame is changed: during a graceful shutdown, WINDOW_UPDATEs on streams the final
//! GOAWAY refuses are discarded (`goaway` says why), so the bytes h2 writes are watched too.
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use zeroize::Zeroize;

use super::goaway::{ServerFrames, PING_LEN};

/// What the server advertises as SETTINGS_MAX_FRAME_SIZE (`server::serve` sets it); header
/// frames are re-emitted at most this large.
pub(super) const MAX_FRAME_BYTES: usize = 16_384;
/// h2 advertises no SETTINGS_HEADER_TABLE_SIZE, so the client's encoder may use the default
/// 4096 bytes (RFC 9113 §6.5.2) and no more.
const DECODER_TABLE_BYTES: usize = 4096;
/// A header block (encoded, or decoded as RFC 7541 counts it) larger than this closes the
/// connection: 4× h2's 16 KiB header list limit, so h2 still answers ordinary oversized headers
/// itself, while HPACK amplification (one byte naming a 4 KiB table entry) is bounded.
const MAX_HEADER_BLOCK_BYTES: usize = 64 * 1024;
/// HEADERS plus CONTINUATION frames of one block; more is a CONTINUATION flood.
const MAX_HEADER_FRAMES: usize = 16;
const LOCAL_AUTHORITY: &[u8] = b"localhost";

const PREFACE_LEN: usize = 24;
pub(super) const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
pub(super) const PING: u8 = 0x6;
pub(super) const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
pub(super) const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;

/// Why a client's connection was closed; h2 never sees the offending frame.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("undecodable HPACK header block: {0}")]
    Hpack(loona_hpack::decoder::DecoderError),
    #[error(
        "header block larger than {MAX_HEADER_BLOCK_BYTES} bytes or {MAX_HEADER_FRAMES} frames"
    )]
    HeaderBlockTooLarge,
    #[error("header frame of {0} bytes exceeds SETTINGS_MAX_FRAME_SIZE")]
    FrameTooLarge(usize),
    #[error("HEADERS frame shorter than its padding and priority fields")]
    BadLayout,
    #[error("frame type {0:#x} inside an unfinished header block")]
    Interleaved(u8),
    #[error("CONTINUATION frame without a header block open on its stream")]
    StrayContinuation,
    #[error("PUSH_PROMISE from a client")]
    PushPromise,
}

#[derive(Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5] & 0x7f, b[6], b[7], b[8]]),
        }
    }

    fn write(&self, out: &mut BytesMut) {
        let len = (self.len as u32).to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.extend_from_slice(&[self.kind, self.flags]);
        out.extend_from_slice(&self.stream.to_be_bytes());
    }
}

/// One whole frame on the wire, for the tests of this module and of `goaway`.
#[cfg(test)]
pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    FrameHead {
        len: payload.len(),
        kind,
        flags,
        stream,
    }
    .write(&mut out);
    out.extend_from_slice(payload);
    out.to_vec()
}

enum Want {
    /// Bytes to copy unchanged: the connection preface, then each non-header frame's payload.
    Passthrough(usize),
    /// Bytes to drop: the payload of a discarded frame.
    Discard(usize),
    FrameHeader,
    HeaderPayload(FrameHead),
}

/// An open header block: HEADERS seen, END_HEADERS not yet.
struct Block {
    stream: u32,
    flags: u8,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
    frames: usize,
}

/// The client→server half of the rewriting, free of I/O: `feed` consumes what it can of `input`
/// and appends what h2 should read to `out`.
pub(crate) struct Rewriter {
    want: Want,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    server: ServerFrames,
    /// The highest stream id the client opened.
    max_opened: u32,
    /// Set when the client ACKs a shutdown PING: streams above it are refused by the final GOAWAY.
    refused_above: Option<u32>,
}

impl Rewriter {
    pub(crate) fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(DECODER_TABLE_BYTES);
        Self {
            want: Want::Passthrough(PREFACE_LEN),
            block: None,
            decoder,
            server: ServerFrames::new(),
            max_opened: 0,
            refused_above: None,
        }
    }

    /// Bytes h2 wrote to the client, in order.
    pub(crate) fn observe_written(&mut self, bytes: &[u8]) {
        self.server.observe(bytes);
    }

    pub(crate) fn feed(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        loop {
            match self.want {
                Want::Passthrough(0) | Want::Discard(0) => self.want = Want::FrameHeader,
                Want::Passthrough(n) => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let take = n.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    // DATA frames carry Encrypt plaintexts: no copy stays behind in the buffer.
                    input[..take].zeroize();
                    input.advance(take);
                    self.want = Want::Passthrough(n - take);
                }
                Want::Discard(n) => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let take = n.min(input.len());
                    input.advance(take);
                    self.want = Want::Discard(n - take);
                }
                Want::FrameHeader => {
                    let Some(raw) = input.first_chunk::<FRAME_HEADER_LEN>() else {
                        return Ok(());
                    };
                    let head = FrameHead::parse(raw);
                    match head.kind {
                        PUSH_PROMISE => return Err(FrameError::PushPromise),
                        HEADERS | CONTINUATION if head.len > MAX_FRAME_BYTES => {
                            return Err(FrameError::FrameTooLarge(head.len))
                        }
                        HEADERS | CONTINUATION => self.want = Want::HeaderPayload(head),
                        kind if self.block.is_some() => return Err(FrameError::Interleaved(kind)),
                        PING if head.flags & ACK != 0 && head.len == PING_LEN => {
                            let Some(payload) =
                                input.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + PING_LEN)
                            else {
                                return Ok(());
                            };
                            if self.server.is_shutdown_ping(payload) {
                                self.refused_above.get_or_insert(self.max_opened);
                            }
                            out.extend_from_slice(&input[..FRAME_HEADER_LEN]);
                            self.want = Want::Passthrough(head.len);
                        }
                        WINDOW_UPDATE
                            if head.stream != 0
                                && self.refused_above.is_some_and(|last| head.stream > last) =>
                        {
                            tracing::debug!(
                                stream = head.stream,
                                "discarding a WINDOW_UPDATE on a stream the shutdown refused"
                            );
                            self.want = Want::Discard(head.len);
                        }
                        _ => {
                            out.extend_from_slice(raw);
                            self.want = Want::Passthrough(head.len);
                        }
                    }
                    input.advance(FRAME_HEADER_LEN);
                }
                Want::HeaderPayload(head) => {
                    if input.len() < head.len {
                        return Ok(());
                    }
                    let payload = input.split_to(head.len);
                    self.want = Want::FrameHeader;
                    self.header_frame(head, &payload, out)?;
                }
            }
        }
    }

    fn header_frame(
        &mut self,
        head: FrameHead,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        if head.kind == HEADERS {
            if self.block.is_some() {
                return Err(FrameError::Interleaved(HEADERS));
            }
            let (priority, fragment) = split_headers_payload(head.flags, payload)?;
            self.max_opened = self.max_opened.max(head.stream);
            self.block = Some(Block {
                stream: head.stream,
                flags: head.flags,
                priority,
                fragment: fragment.to_vec(),
                frames: 1,
            });
        } else {
            match self.block.as_mut() {
                Some(b) if b.stream == head.stream => {
                    b.fragment.extend_from_slice(payload);
                    b.frames += 1;
                }
                _ => return Err(FrameError::StrayContinuation),
            }
        }
        let block = match self.block.take() {
            Some(b)
                if b.fragment.len() > MAX_HEADER_BLOCK_BYTES || b.frames > MAX_HEADER_FRAMES =>
            {
                return Err(FrameError::HeaderBlockTooLarge)
            }
            Some(b) if head.flags & END_HEADERS == 0 => {
                self.block = Some(b);
                return Ok(());
            }
            Some(b) => b,
            None => return Ok(()),
        };
        let encoded = self.reencode(&block.fragment)?;
        emit_block(&block, &encoded, out);
        Ok(())
    }

    /// Decodes one complete header block against the client's table and encodes it again as
    /// literals, with any `:authority` h2 would refuse replaced.
    fn reencode(&mut self, fragment: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut encoded = Vec::with_capacity(fragment.len() + 64);
        let mut listed = 0usize;
        let mut over = false;
        self.decoder
            .decode_with_cb(fragment, |name, value| {
                listed = listed.saturating_add(name.len() + value.len() + 32);
                if over || listed > MAX_HEADER_BLOCK_BYTES {
                    over = true;
                    return;
                }
                let value: &[u8] = if &*name == b":authority" && !acceptable_authority(&value) {
                    LOCAL_AUTHORITY
                } else {
                    &value
                };
                encode_literal(&name, value, &mut encoded);
            })
            .map_err(FrameError::Hpack)?;
        if over {
            return Err(FrameError::HeaderBlockTooLarge);
        }
        Ok(encoded)
    }
}

/// The same test h2 applies to `:authority` before it accepts a request.
fn acceptable_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Splits a HEADERS payload into its priority field (kept) and header block fragment, dropping
/// the padding.
fn split_headers_payload(
    flags: u8,
    payload: &[u8],
) -> Result<(Option<[u8; PRIORITY_LEN]>, &[u8]), FrameError> {
    let mut rest = payload;
    if flags & PADDED != 0 {
        let (&pad, body) = rest.split_first().ok_or(FrameError::BadLayout)?;
        let keep = body
            .len()
            .checked_sub(usize::from(pad))
            .ok_or(FrameError::BadLayout)?;
        rest = &body[..keep];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (field, body) = rest
            .split_first_chunk::<PRIORITY_LEN>()
            .ok_or(FrameError::BadLayout)?;
        priority = Some(*field);
        rest = body;
    }
    Ok((priority, rest))
}

/// Writes the block as one HEADERS frame and as many CONTINUATION frames as it takes, each at
/// most `MAX_FRAME_BYTES`, keeping END_STREAM and the priority field.
fn emit_block(block: &Block, encoded: &[u8], out: &mut BytesMut) {
    let prio_len = if block.priority.is_some() {
        PRIORITY_LEN
    } else {
        0
    };
    let (first, mut rest) = encoded.split_at(encoded.len().min(MAX_FRAME_BYTES - prio_len));
    let mut flags = block.flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let head = FrameHead {
        len: prio_len + first.len(),
        kind: HEADERS,
        flags,
        stream: block.stream,
    };
    head.write(out);
    if let Some(p) = block.priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_BYTES));
        rest = tail;
        let head = FrameHead {
            len: chunk.len(),
            kind: CONTINUATION,
            flags: if rest.is_empty() { END_HEADERS } else { 0 },
            stream: block.stream,
        };
        head.write(out);
        out.extend_from_slice(chunk);
    }
}

/// RFC 7541 §6.2.2, literal header field without indexing, new name, no Huffman coding.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_string(name, out);
    encode_string(value, out);
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_int(s.len(), 7, out);
    out.extend_from_slice(s);
}

/// RFC 7541 §5.1 integer with an N-bit prefix; the prefix bits above it are left 0.
fn encode_int(mut v: usize, prefix_bits: u32, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(v as u8);
        return;
    }
    out.push(max as u8);
    v -= max;
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Client bytes after the connection preface, delivered in pieces of the first byte's size (+1),
/// through one `Rewriter` (`cargo fuzz`, fuzz/). The server has begun a graceful shutdown with a
/// PING of eight zero bytes, so an ACK of it in the input takes the discarding path too.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_frames(data: &[u8]) {
    let Some((&step, wire)) = data.split_first() else {
        return;
    };
    let mut r = Rewriter::new();
    r.observe_written(&[
        0, 0, 8, GOAWAY, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    r.observe_written(&[0, 0, 8, PING, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let (mut input, mut out) = (
        BytesMut::from(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]),
        BytesMut::new(),
    );
    for piece in wire.chunks(usize::from(step) + 1) {
        input.extend_from_slice(piece);
        if r.feed(&mut input, &mut out).is_err() {
            return;
        }
        out.clear();
    }
}

const READ_CHUNK: usize = 16 * 1024;

/// A server-side connection whose incoming HTTP/2 frames go through a `Rewriter`; writes pass
/// unchanged and are shown to it. A `FrameError` surfaces as an `InvalidData` read error, which
/// closes the connection.
pub(crate) struct Rewrite<C> {
    inner: C,
    rewriter: Rewriter,
    input: BytesMut,
    out: BytesMut,
    eof: bool,
}

impl<C> Rewrite<C> {
    pub(crate) fn new(inner: C) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            input: BytesMut::new(),
            out: BytesMut::new(),
            eof: false,
        }
    }
}

impl<C: tonic::transport::server::Connected> tonic::transport::server::Connected for Rewrite<C> {
    type ConnectInfo = C::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Rewrite<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out[..n].zeroize();
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let filled = rb.filled().len();
            if filled == 0 {
                // An unfinished frame at EOF is dropped; h2 sees the connection end.
                this.eof = true;
                continue;
            }
            this.input.extend_from_slice(&chunk[..filled]);
            chunk[..filled].zeroize();
            if let Err(e) = this.rewriter.feed(&mut this.input, &mut this.out) {
                tracing::debug!(error = %e, "closing a KMS connection: malformed HTTP/2 header frames");
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Rewrite<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.rewriter.observe_written(&buf[..n.min(buf.len())]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
