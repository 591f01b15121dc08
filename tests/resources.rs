//! Bounded resources on the KMS side: idle connections are closed after server.idle_timeout,
//! and a provider out of file descriptors backs off accepting instead of spinning, then serves
//! again once descriptors are free.
pub mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is 14th, stime 15th overall.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
}

#[tokio::test]
async fn idle_kms_connections_are_closed_after_idle_timeout() {
    let bao = Bao::start().await;
    let mut o = ProviderOptions::new(&bao);
    o.server_extra = "idle_timeout = \"1s\"\n".into();
    let p = Provider::start(&o).await;
    let mut idle = tokio::net::UnixStream::connect(&p.socket)
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection stayed open");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    // A connection in use is not affected.
    let mut c = p.client().await;
    for _ in 0..3 {
        encrypt(&mut c, b"still-in-use").await;
        // Calls spaced under idle_timeout (1s) yet 1.8s in all: time must pass.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    eprintln!("FIGURES idle: an idle KMS connection was closed after {took:?} (idle_timeout 1s)");
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let pid = p.pid().expect("pid");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let limit = open + 5;
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:"))
        .output()
        .expect("prlimit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Far more connections than descriptors left.
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(
            tokio::net::UnixStream::connect(&p.socket)
                .await
                .expect("connect (the backlog takes it)"),
        );
    }
    wait_for(
        "the accept loop out of descriptors",
        Duration::from_secs(10),
        || {
            let p = &p;
            async move { p.logs().contains("out of file descriptors") }
        },
    )
    .await;
    let before = cpu_ticks(pid);
    // A sampling window: CPU time is measured over a fixed span.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu_ticks(pid) - before;
    // A spinning accept loop burns ~200 ticks (2 s of one core) here.
    assert!(
        ticks < 60,
        "{ticks} CPU ticks in 2 s while out of descriptors"
    );
    assert!(p.logs().contains("out of file descriptors"), "{}", p.logs());
    drop(conns);
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg("--nofile=1024:")
        .output()
        .expect("prlimit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let healed = Instant::now();
    p.wait_healthy().await;
    let mut c = p.client().await;
    encrypt(&mut c, b"after").await;
    eprintln!(
        "FIGURES emfile: {ticks} CPU ticks over 2 s with 40 connections and {limit} descriptors; serving again {:?} after descriptors were freed",
        healed.elapsed()
    );
}
