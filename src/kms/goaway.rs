//! What the server has told the client about shutting down, read from the bytes h2 writes.
//!
//! A graceful shutdown is GOAWAY(2^31-1), a PING, and on the client's PING ACK a final GOAWAY
//! naming the last stream h2 took. Streams the client opens behind that ACK are refused and
//! h2 ignores their HEADERS, DATA and RST_STREAM, but answers a WINDOW_UPDATE on one of them
//! with GOAWAY(PROTOCOL_ERROR) (h2 0.4 counts the stream as idle), which fails every call still
//! running on the connection. grpc-core sends exactly that WINDOW_UPDATE right behind a new
//! stream's HEADERS. `Rewriter` therefore learns here which PINGs belong to a shutdown and
//! discards such WINDOW_UPDATEs, as RFC 9113 §6.8 allows for streams above the GOAWAY's.
use super::authority::{ACK, FRAME_HEADER_LEN, GOAWAY, PING};

/// PING payloads are 8 bytes (RFC 9113 §6.7).
pub(super) const PING_LEN: usize = 8;
/// h2 sends one shutdown PING per connection; a few more are kept in case a version sends more.
const MAX_PINGS: usize = 4;

enum State {
    /// Collecting a frame header; `.0` bytes of `head` are filled.
    Head(usize),
    /// Inside a frame's payload: bytes left, and whether they are a shutdown PING's payload.
    Payload { left: usize, ping: bool },
}

/// Follows frame boundaries in the server→client bytes (which start with a frame: the server
/// sends no preface) and keeps the payloads of PINGs sent after a GOAWAY.
pub(super) struct ServerFrames {
    state: State,
    head: [u8; FRAME_HEADER_LEN],
    payload: [u8; PING_LEN],
    filled: usize,
    goaway_sent: bool,
    pings: Vec<[u8; PING_LEN]>,
}

impl ServerFrames {
    pub(super) fn new() -> Self {
        Self {
            state: State::Head(0),
            head: [0; FRAME_HEADER_LEN],
            payload: [0; PING_LEN],
            filled: 0,
            goaway_sent: false,
            pings: Vec::new(),
        }
    }

    /// Bytes the connection accepted for writing, in order.
    pub(super) fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Head(have) => {
                    let take = (FRAME_HEADER_LEN - have).min(bytes.len());
                    self.head[have..have + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if have + take < FRAME_HEADER_LEN {
                        self.state = State::Head(have + take);
                        continue;
                    }
                    let h = &self.head;
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    if kind == GOAWAY {
                        self.goaway_sent = true;
                    }
                    let ping = kind == PING && flags & ACK == 0 && self.goaway_sent;
                    self.filled = 0;
                    self.state = State::Payload { left: len, ping };
                    self.end_of_frame();
                }
                State::Payload { left, ping } => {
                    let take = left.min(bytes.len());
                    if ping {
                        let room = PING_LEN.saturating_sub(self.filled).min(take);
                        self.payload[self.filled..self.filled + room]
                            .copy_from_slice(&bytes[..room]);
                        self.filled += room;
                    }
                    bytes = &bytes[take..];
                    self.state = State::Payload {
                        left: left - take,
                        ping,
                    };
                    self.end_of_frame();
                }
            }
        }
    }

    fn end_of_frame(&mut self) {
        if let State::Payload { left: 0, ping } = self.state {
            if ping && self.filled == PING_LEN && self.pings.len() < MAX_PINGS {
                self.pings.push(self.payload);
            }
            self.state = State::Head(0);
        }
    }

    /// Whether `payload` is that of a PING the server sent after a GOAWAY.
    pub(super) fn is_shutdown_ping(&self, payload: &[u8]) -> bool {
        self.pings.iter().any(|p| p[..] == *payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::authority::frame;

    fn server_bytes() -> Vec<u8> {
        let mut w = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]); // SETTINGS
        w.extend(frame(PING, 0, 0, b"keepaliv")); // before any GOAWAY: not a shutdown PING
        w.extend(frame(GOAWAY, 0, 0, &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
        w.extend(frame(PING, 0, 0, b"shutdown"));
        w.extend(frame(PING, ACK, 0, b"answered"));
        w
    }

    #[test]
    fn only_pings_after_a_goaway_count_in_any_write_split() {
        let wire = server_bytes();
        for step in 1..wire.len() {
            let mut s = ServerFrames::new();
            for piece in wire.chunks(step) {
                s.observe(piece);
            }
            assert!(s.is_shutdown_ping(b"shutdown"), "split {step}");
            assert!(!s.is_shutdown_ping(b"keepaliv"), "split {step}");
            assert!(!s.is_shutdown_ping(b"answered"), "split {step}");
        }
    }

    #[test]
    fn no_goaway_no_shutdown_ping() {
        let mut s = ServerFrames::new();
        s.observe(&frame(PING, 0, 0, b"shutdown"));
        assert!(!s.is_shutdown_ping(b"shutdown"));
    }
}
