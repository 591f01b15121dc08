//! The telemetry listeners (`/metrics`, `/livez`, `/readyz`) cannot be used by a local client to
//! take the provider's file descriptors: thousands of idle connections leave its descriptor count
//! bounded while KMS calls, new KMS connections and OpenBao re-logins keep working; and `/livez`
//! reports when the provider cannot open a descriptor.
pub mod common;

use std::time::{Duration, Instant};

use bao_kms_provider::pb;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The provider's descriptor limit during the test: what a local client could exhaust without
/// a cap (the listeners used to accept every connection and keep it open indefinitely).
const PROVIDER_FD_LIMIT: u64 = 1024;
/// Idle connections the client opens to each telemetry listener.
const IDLE_PER_LISTENER: usize = 2000;
/// `telemetry.max_connections` as configured for the test (the default).
const MAX_CONNECTIONS: usize = 64;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// Sets the soft RLIMIT_NOFILE of `pid` (0: this process), keeping the hard limit; returns the
/// soft limit it had.
fn set_fd_limit(pid: u32, soft: Option<u64>) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with valid pointers; only reads or sets the limit.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(r, 0, "prlimit read: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft.unwrap_or(old.rlim_max).min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit set: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// A full Encrypt → Decrypt round trip on a fresh KMS connection.
async fn round_trip_on_a_new_connection(p: &Provider, marker: u8) {
    let mut c = p.client().await;
    let e = encrypt(&mut c, &[marker; 32]).await;
    let d = c
        .decrypt(decrypt_request(&e))
        .await
        .expect("Decrypt")
        .into_inner();
    assert_eq!(d.plaintext, [marker; 32]);
}

#[tokio::test]
async fn thousands_of_idle_telemetry_connections_leave_descriptors_and_kms_calls_alone() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let pid = p.pid().expect("provider pid");
    set_fd_limit(pid, Some(PROVIDER_FD_LIMIT));
    // The client side holds every connection it opens.
    set_fd_limit(0, None);
    let mut kms = p.client().await;
    let before = fd_count(pid);

    let mut held = Vec::with_capacity(2 * IDLE_PER_LISTENER);
    let mut most = before;
    for port in [p.metrics_port, p.health_port] {
        for i in 0..IDLE_PER_LISTENER {
            // A listener that stops accepting (the provider out of descriptors) fills its
            // backlog, and connects then hang.
            let s = tokio::time::timeout(
                Duration::from_secs(10),
                TcpStream::connect(("127.0.0.1", port)),
            )
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "connect #{i} to {port} not accepted in 10 s; provider holds {} descriptors",
                    fd_count(pid)
                )
            })
            .unwrap_or_else(|e| panic!("connect #{i} to {port}: {e}"));
            held.push(s);
            if i % 100 == 0 {
                most = most.max(fd_count(pid));
            }
        }
    }
    // Every connection has been handled (kept or closed) once a marker connection behind them
    // is handled too: closed at once while the listener is full, or answered once a slot has
    // come free (the kept ones end after the header timeout).
    for port in [p.metrics_port, p.health_port] {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let mut marker = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("marker connect");
            let _ = marker
                .write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = [0u8; 1];
            let handled = tokio::time::timeout(Duration::from_secs(2), marker.read(&mut buf))
                .await
                .is_ok();
            most = most.max(fd_count(pid));
            if handled {
                break;
            }
            assert!(
                Instant::now() < end,
                "listener on {port} never reached a connection behind the held ones"
            );
        }
    }

    // While the connections are held: calls on the open connection, new KMS connections, and an
    // OpenBao re-login (its token revoked: the JWT file is read and a new connection opened).
    round_trip_on_a_new_connection(&p, 1).await;
    for i in 0..20u8 {
        let mut c = p.client().await;
        c.status(pb::StatusRequest {})
            .await
            .unwrap_or_else(|e| panic!("Status on new connection {i}: {e}"));
        most = most.max(fd_count(pid));
    }
    let logins = |logs: &str| logs.matches("logged in to OpenBao").count();
    let logins_before = logins(&p.logs());
    bao.revoke_all_tokens().await;
    let e = encrypt(&mut kms, &[2u8; 32]).await;
    kms.decrypt(decrypt_request(&e))
        .await
        .expect("Decrypt after the re-login");
    assert!(
        logins(&p.logs()) > logins_before,
        "the provider logged in again:\n{}",
        p.logs()
    );
    round_trip_on_a_new_connection(&p, 3).await;
    most = most.max(fd_count(pid));

    let bound = before + 2 * MAX_CONNECTIONS + 64;
    eprintln!(
        "FIGURES telemetry: {} idle connections held per listener, provider descriptors before {before}, at most {most} (bound {bound}, limit {PROVIDER_FD_LIMIT})",
        IDLE_PER_LISTENER
    );
    assert!(
        most <= bound && most < 400,
        "provider held {most} descriptors (before: {before})"
    );
    assert!(
        !p.logs().contains("Too many open files"),
        "the provider ran out of descriptors:\n{}",
        p.logs()
    );

    // Once the client lets go, the endpoints answer again and the shed connections were counted.
    drop(held);
    wait_for("/metrics answers", Duration::from_secs(20), || async {
        let r = http()
            .get(format!("http://127.0.0.1:{}/metrics", p.metrics_port))
            .send()
            .await;
        match r {
            Ok(r) => r.text().await.is_ok_and(|t| {
                t.lines()
                    .filter(|l| l.starts_with("openbao_kms_http_connections_shed_total "))
                    .any(|l| l.split_whitespace().nth(1).is_some_and(|n| n != "0"))
            }),
            Err(_) => false,
        }
    })
    .await;
    let (code, body) = p.http_get(p.health_port, "/livez").await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn idle_telemetry_connections_are_closed_after_the_header_timeout() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let mut idle = TcpStream::connect(("127.0.0.1", p.health_port))
        .await
        .expect("connect");
    let opened = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(15), idle.read(&mut buf))
        .await
        .expect("the provider closes a connection that sends no request")
        .unwrap_or(0);
    let took = opened.elapsed();
    // hyper answers a header timeout with a 408 or just closes; either way the connection ends.
    assert!(
        n == 0 || buf.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );

    // A kept-alive connection that went quiet after a request is closed the same way.
    let mut kept = TcpStream::connect(("127.0.0.1", p.health_port))
        .await
        .expect("connect");
    kept.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout_at(end.into(), kept.read(&mut chunk))
            .await
            .expect("the kept-alive connection is closed once idle")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn livez_and_the_watchdog_report_when_no_descriptor_can_be_opened() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let pid = p.pid().expect("provider pid");
    // Opened before the limit drops: the request below needs no new descriptor to be served.
    let mut conn = TcpStream::connect(("127.0.0.1", p.health_port))
        .await
        .expect("connect");
    let (code, _) = p.http_get(p.health_port, "/livez").await;
    assert_eq!(code, 200);

    // Below every descriptor the process holds: the next open of any kind fails with EMFILE.
    let previous = set_fd_limit(pid, Some(3));
    conn.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut response))
        .await
        .expect("/livez answers on the open connection")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 503") && text.contains("cannot open a file"),
        "{text}"
    );
    wait_for(
        "the watchdog check to name the missing descriptors",
        Duration::from_secs(15),
        || async {
            p.logs()
                .lines()
                .any(|l| l.contains("withholding the watchdog ping") && l.contains("cannot open"))
        },
    )
    .await;

    set_fd_limit(pid, Some(previous));
    wait_for("/livez ok again", Duration::from_secs(15), || async {
        p.http_get(p.health_port, "/livez").await.0 == 200
    })
    .await;
}
