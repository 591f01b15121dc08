use super::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type Fields = Vec<(Vec<u8>, Vec<u8>)>;
type OtherFrame = (u8, u8, Vec<u8>);

fn request(authority: &[u8]) -> Fields {
    [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/v2.KeyManagementService/Status"),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.to_vec(), v.to_vec()))
    .collect()
}

fn encode(enc: &mut loona_hpack::Encoder<'_>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    enc.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// Feeds `wire` in pieces of `step` bytes, as a socket might deliver it.
fn run(wire: &[u8], step: usize) -> Result<Vec<u8>, FrameError> {
    let mut r = Rewriter::new();
    let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
    for piece in wire.chunks(step.max(1)) {
        input.extend_from_slice(piece);
        r.feed(&mut input, &mut out)?;
    }
    Ok(out.to_vec())
}

/// Splits what h2 would read into frames and decodes every header block with one decoder, as
/// h2 does; checks every header frame fits `MAX_FRAME_BYTES`. Other frames: (type, flags, payload).
fn parse(out: &[u8]) -> (Vec<Fields>, Vec<OtherFrame>) {
    assert!(out.starts_with(PREFACE));
    let mut rest = &out[PREFACE.len()..];
    let mut dec = loona_hpack::Decoder::new();
    let (mut blocks, mut others, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    while !rest.is_empty() {
        let head = FrameHead::parse(rest.first_chunk().expect("frame header"));
        let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + head.len];
        rest = &rest[FRAME_HEADER_LEN + head.len..];
        match head.kind {
            HEADERS | CONTINUATION => {
                assert!(
                    head.len <= MAX_FRAME_BYTES,
                    "header frame of {} bytes",
                    head.len
                );
                assert_eq!(head.flags & PADDED, 0);
                let skip = if head.flags & PRIORITY != 0 {
                    PRIORITY_LEN
                } else {
                    0
                };
                pending.extend_from_slice(&payload[skip..]);
                if head.flags & END_HEADERS != 0 {
                    blocks.push(dec.decode(&pending).expect("h2-side decode"));
                    pending.clear();
                }
            }
            _ => others.push((head.kind, head.flags, payload.to_vec())),
        }
    }
    assert!(pending.is_empty(), "unterminated header block");
    (blocks, others)
}

fn authority_of(block: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
    let found = block.iter().find(|(n, _)| n == b":authority");
    &found.expect(":authority").1
}

#[test]
fn authorities_h2_refuses_become_localhost_and_valid_ones_stay() {
    let mut enc = loona_hpack::Encoder::new();
    let mut wire = PREFACE.to_vec();
    let authorities: [&[u8]; 4] = [
        b"/run/openbao-kms/kms.sock",
        b"%2Frun%2Fopenbao-kms%2Fkms.sock",
        b"localhost",
        b"kms.example:8443",
    ];
    for (i, a) in authorities.iter().enumerate() {
        let block = encode(&mut enc, &request(a));
        wire.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i as u32, &block));
    }
    for step in [1, 7, wire.len()] {
        let (blocks, _) = parse(&run(&wire, step).expect("rewrite"));
        let got: Vec<&[u8]> = blocks.iter().map(|b| authority_of(b)).collect();
        assert_eq!(
            got,
            [
                &b"localhost"[..],
                b"localhost",
                b"localhost",
                b"kms.example:8443"
            ]
        );
        assert_eq!(
            blocks[3],
            request(b"kms.example:8443"),
            "other fields unchanged"
        );
    }
}

#[test]
fn the_clients_dynamic_table_is_followed_across_blocks() {
    // The first block adds every field to the client's dynamic table (literal with incremental
    // indexing, new name); the second is only indices into it, the oldest (first) at 62 + 5.
    let headers = request(b"/tmp/kms.sock");
    let mut first = Vec::new();
    for (n, v) in &headers {
        first.push(0x40);
        encode_string(n, &mut first);
        encode_string(v, &mut first);
    }
    let second: Vec<u8> = (62..62 + headers.len() as u8)
        .rev()
        .map(|i| 0x80 | i)
        .collect();
    let mut wire = PREFACE.to_vec();
    wire.extend(frame(HEADERS, END_HEADERS, 1, &first));
    wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
    let (blocks, _) = parse(&run(&wire, 5).expect("rewrite"));
    assert_eq!(blocks, vec![request(b"localhost"), request(b"localhost")]);
}

#[test]
fn continuation_padding_and_priority_are_handled() {
    let mut enc = loona_hpack::Encoder::new();
    let block = encode(&mut enc, &request(b"/tmp/kms.sock"));
    let (a, b) = block.split_at(block.len() / 2);
    let mut payload = vec![3u8]; // pad length
    payload.extend_from_slice(&[0, 0, 0, 0, 15]); // priority: depends on 0, weight 16
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut wire = PREFACE.to_vec();
    wire.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
    wire.extend(frame(CONTINUATION, END_HEADERS, 1, b));
    let out = run(&wire, 3).expect("rewrite");
    let head = FrameHead::parse(out[PREFACE.len()..].first_chunk().expect("head"));
    assert_eq!(head.flags, PRIORITY | END_STREAM | END_HEADERS);
    let p = PREFACE.len() + FRAME_HEADER_LEN;
    assert_eq!(&out[p..p + PRIORITY_LEN], &[0, 0, 0, 0, 15]);
    let (blocks, _) = parse(&out);
    assert_eq!(blocks, vec![request(b"localhost")]);
}

#[test]
fn a_large_block_is_re_emitted_as_frames_within_the_advertised_size() {
    let mut headers = request(b"/tmp/kms.sock");
    for i in 0..4 {
        headers.push((format!("x-big-{i}").into_bytes(), vec![b'v'; 9_000]));
    }
    let mut enc = loona_hpack::Encoder::new();
    let block = encode(&mut enc, &headers);
    let mut wire = PREFACE.to_vec();
    let mut chunks = block.chunks(MAX_FRAME_BYTES).peekable();
    let mut kind = HEADERS;
    while let Some(c) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        wire.extend(frame(kind, flags, 1, c));
        kind = CONTINUATION;
    }
    let (blocks, _) = parse(&run(&wire, 4096).expect("rewrite"));
    headers[3].1 = b"localhost".to_vec();
    assert_eq!(blocks, vec![headers]);
}

#[test]
fn other_frames_pass_byte_for_byte() {
    let mut enc = loona_hpack::Encoder::new();
    let mut wire = PREFACE.to_vec();
    wire.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
    wire.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &encode(&mut enc, &request(b"x y")),
    ));
    let data: Vec<u8> = (0..16_000u32).map(|i| i as u8).collect();
    wire.extend(frame(0x0, END_STREAM, 1, &data)); // DATA
    wire.extend(frame(0x8, 0, 0, &[0, 1, 0, 0])); // WINDOW_UPDATE
    let (_, others) = parse(&run(&wire, 1000).expect("rewrite"));
    assert_eq!(others.len(), 3);
    assert_eq!(others[1], (0x0, END_STREAM, data));
}

fn expect_err(wire: &[u8]) -> FrameError {
    let mut full = PREFACE.to_vec();
    full.extend_from_slice(wire);
    match run(&full, 2) {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn malformed_header_frames_are_connection_errors() {
    // Index 127+ into an empty dynamic table.
    let bad_index = frame(HEADERS, END_HEADERS, 1, &[0xff, 0x80, 0x01]);
    assert!(matches!(expect_err(&bad_index), FrameError::Hpack(_)));
    // A string longer than the block.
    let short = frame(HEADERS, END_HEADERS, 1, &[0x00, 0x7f, 0x10, b'a']);
    assert!(matches!(expect_err(&short), FrameError::Hpack(_)));
    // A table size update above what the server allows.
    let resize = frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x3f, 0x82]);
    assert!(matches!(expect_err(&resize), FrameError::Hpack(_)));
    let pad = frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82]);
    assert!(matches!(expect_err(&pad), FrameError::BadLayout));
    let stray = frame(CONTINUATION, END_HEADERS, 1, &[0x82]);
    assert!(matches!(expect_err(&stray), FrameError::StrayContinuation));
    let mut interleaved = frame(HEADERS, 0, 1, &[0x82]);
    interleaved.extend(frame(0x0, 0, 1, b"data"));
    assert!(matches!(
        expect_err(&interleaved),
        FrameError::Interleaved(0)
    ));
    let mut other_stream = frame(HEADERS, 0, 1, &[0x82]);
    other_stream.extend(frame(CONTINUATION, END_HEADERS, 3, &[0x84]));
    assert!(matches!(
        expect_err(&other_stream),
        FrameError::StrayContinuation
    ));
    let push = frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]);
    assert!(matches!(expect_err(&push), FrameError::PushPromise));
    let big = frame(HEADERS, END_HEADERS, 1, &vec![0x82; MAX_FRAME_BYTES + 1]);
    assert!(matches!(expect_err(&big), FrameError::FrameTooLarge(_)));
}

#[test]
fn floods_and_hpack_amplification_are_bounded() {
    let mut flood = frame(HEADERS, 0, 1, &[0x82]);
    for _ in 0..MAX_HEADER_FRAMES {
        flood.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    assert!(matches!(
        expect_err(&flood),
        FrameError::HeaderBlockTooLarge
    ));
    // One 4000-byte entry in the client's table, then referenced 1000 times by one byte each.
    let mut literal = vec![0x40];
    encode_string(b"x", &mut literal);
    encode_string(&[b'v'; 4000], &mut literal);
    literal.extend(std::iter::repeat_n(0xbe, 1000)); // index 62: the newest dynamic entry
    assert!(matches!(
        expect_err(&frame(HEADERS, END_HEADERS, 1, &literal)),
        FrameError::HeaderBlockTooLarge
    ));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A fixed xorshift sequence: reproducible, no extra dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..2000 {
        let mut wire = PREFACE.to_vec();
        let frames = next() % 4 + 1;
        for _ in 0..frames {
            let len = (next() % 64) as usize;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let kind = [HEADERS, CONTINUATION, 0x0, (next() % 12) as u8][(next() % 4) as usize];
            wire.extend(frame(kind, next() as u8, (next() % 4) as u32, &payload));
        }
        let _ = run(&wire, (next() % 17 + 1) as usize);
    }
}

/// Behind the ACK of a PING the server sent after its GOAWAY, a WINDOW_UPDATE on a newly
/// opened stream is dropped (h2 would answer it with GOAWAY(PROTOCOL_ERROR)); one on a stream
/// opened before the ACK, and the connection-level one, pass. Any read split.
#[test]
fn window_updates_on_streams_refused_by_the_shutdown_are_dropped() {
    let mut server = frame(GOAWAY, 0, 0, &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    server.extend(frame(PING, 0, 0, b"shutdown"));
    let mut enc = loona_hpack::Encoder::new();
    let mut wire = PREFACE.to_vec();
    wire.extend(frame(0x4, 0, 0, &[]));
    wire.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &encode(&mut enc, &request(b"localhost")),
    ));
    wire.extend(frame(PING, ACK, 0, b"keepaliv"));
    wire.extend(frame(PING, ACK, 0, b"shutdown"));
    wire.extend(frame(
        HEADERS,
        END_HEADERS,
        3,
        &encode(&mut enc, &request(b"localhost")),
    ));
    wire.extend(frame(WINDOW_UPDATE, 0, 3, &[0, 0, 0x10, 0]));
    wire.extend(frame(WINDOW_UPDATE, 0, 1, &[0, 0, 0x20, 0]));
    wire.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0x30, 0]));
    for step in 1..wire.len() {
        let mut r = Rewriter::new();
        r.observe_written(&server);
        let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
        for piece in wire.chunks(step) {
            input.extend_from_slice(piece);
            r.feed(&mut input, &mut out).expect("feed");
        }
        let (blocks, others) = parse(&out);
        assert_eq!(blocks.len(), 2, "split {step}");
        let updates: Vec<_> = others
            .iter()
            .filter(|(kind, _, _)| *kind == WINDOW_UPDATE)
            .map(|(_, _, payload)| payload.clone())
            .collect();
        assert_eq!(
            updates,
            [vec![0, 0, 0x20, 0], vec![0, 0, 0x30, 0]],
            "split {step}"
        );
    }
}
