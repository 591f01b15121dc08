//! Graceful shutdown seen frame by frame. On SIGTERM the server sends GOAWAY and a PING, and
//! after the client's PING ACK a final GOAWAY naming the last stream it took; a client that had
//! already queued a new stream sends its HEADERS and a WINDOW_UPDATE for it behind that ACK
//! (grpc-core does). The stream is refused by the GOAWAY and the client retries it on the next
//! process; the WINDOW_UPDATE must be discarded, not answered with GOAWAY(PROTOCOL_ERROR), which
//! fails the client's other calls on that connection. Once the server has sent everything it
//! keeps reading until the client closes, so a late write of the client does not fail.
pub mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

struct Frame {
    kind: u8,
    flags: u8,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = len[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A request header block of literals without indexing (RFC 7541 §6.2.2).
fn request_block() -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/v2.KeyManagementService/Status"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        out.push(0);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Reads frames until `stop` accepts one or the server closes; returns all frames read.
async fn read_until(
    conn: &mut UnixStream,
    buf: &mut Vec<u8>,
    stop: impl Fn(&Frame) -> bool,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let f = Frame {
                kind: buf[3],
                flags: buf[4],
                payload: buf[9..9 + len].to_vec(),
            };
            buf.drain(..9 + len);
            let done = stop(&f);
            frames.push(f);
            if done {
                return frames;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("server neither sent the awaited frame nor closed within 10s")
            .unwrap_or(0);
        if n == 0 {
            return frames;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn goaway_code(f: &Frame) -> Option<u32> {
    (f.kind == GOAWAY && f.payload.len() >= 8)
        .then(|| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
}

#[tokio::test]
async fn a_window_update_behind_the_ping_ack_does_not_end_the_drain_with_protocol_error() {
    let bao = Bao::start().await;
    let mut p = Provider::start(&ProviderOptions::new(&bao)).await;
    let mut conn = UnixStream::connect(&p.socket).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    conn.write_all(&hello).await.expect("write preface");
    let mut buf = Vec::new();
    read_until(&mut conn, &mut buf, |f| {
        f.kind == SETTINGS && f.flags & ACK == 0
    })
    .await;
    conn.write_all(&frame(SETTINGS, ACK, 0, &[]))
        .await
        .expect("settings ack");

    p.signal(libc::SIGTERM);
    let seen = read_until(&mut conn, &mut buf, |f| {
        f.kind == PING && f.flags & ACK == 0
    })
    .await;
    let ping = seen
        .iter()
        .find(|f| f.kind == PING && f.flags & ACK == 0)
        .unwrap_or_else(|| panic!("no PING after SIGTERM\n{}", p.logs()));
    assert!(
        seen.iter().any(|f| goaway_code(f) == Some(0)),
        "no GOAWAY(NO_ERROR) before the PING"
    );

    // What a client with a call queued writes in one go: the ACK, then the new stream.
    let mut burst = frame(PING, ACK, 0, &ping.payload);
    burst.extend(frame(HEADERS, END_HEADERS, 1, &request_block()));
    burst.extend(frame(WINDOW_UPDATE, 0, 1, &65_535u32.to_be_bytes()));
    conn.write_all(&burst).await.expect("write burst");

    let rest = read_until(&mut conn, &mut buf, |_| false).await;
    let codes: Vec<u32> = rest.iter().filter_map(goaway_code).collect();
    assert!(
        !codes.is_empty() && codes.iter().all(|&c| c == 0),
        "GOAWAY error codes after the PING ACK: {codes:?} (1 is PROTOCOL_ERROR)\n{}",
        p.logs()
    );

    // The server has shut its side. A client that queued another call before it read that
    // still writes it; the write must not fail with EPIPE (grpc-core would fail every call on
    // the connection), so the server reads on until the client closes.
    conn.write_all(&frame(HEADERS, END_HEADERS, 3, &request_block()))
        .await
        .unwrap_or_else(|e| panic!("a write after the server's GOAWAY and EOF: {e}"));
    assert_eq!(
        p.exit_code(),
        None,
        "the provider exited before the client closed\n{}",
        p.logs()
    );
    drop(conn);
    assert_eq!(p.stop(), Some(0), "{}", p.logs());
}
