//! `make bench`: KMS call latency and provider memory against a real OpenBao dev server on
//! loopback. Prints p50/p95/p99 per call and compares with the Kubernetes targets (Decrypt under
//! 10 ms, Encrypt under 100 ms). Not a test: numbers depend on the machine.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bao_kms_provider::pb;
use common::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>, target: Option<Duration>) {
    samples.sort();
    let (p50, p95, p99) = (
        percentile(&samples, 0.5),
        percentile(&samples, 0.95),
        percentile(&samples, 0.99),
    );
    let verdict = match target {
        Some(t) if p99 <= t => format!("p99 within target {t:?}"),
        Some(t) => format!("p99 OVER target {t:?}"),
        None => String::new(),
    };
    println!(
        "{name:<22} n={:<5} p50={:>8.3}ms p95={:>8.3}ms p99={:>8.3}ms  {verdict}",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let mut c = p.client().await;
    println!("bao-kms-provider KMS latency over the unix socket, OpenBao dev server on loopback, {n} calls each");

    let mut status = Vec::with_capacity(n);
    let mut enc = Vec::with_capacity(n);
    let mut dec = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        c.status(pb::StatusRequest {}).await.expect("status");
        status.push(t.elapsed());
        let t = Instant::now();
        let e = encrypt(&mut c, &[7u8; 32]).await;
        enc.push(t.elapsed());
        let t = Instant::now();
        c.decrypt(decrypt_request(&e)).await.expect("decrypt");
        dec.push(t.elapsed());
        last = Some(e);
    }
    report("Status", status, Some(Duration::from_millis(1)));
    report("Encrypt", enc, Some(Duration::from_millis(100)));
    report("Decrypt", dec, Some(Duration::from_millis(10)));

    // Concurrency: 8 callers decrypting at once, as after an apiserver restart with a cold cache.
    let e = last.expect("one encrypt");
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = p.client().await;
        let req = decrypt_request(&e);
        tasks.push(tokio::spawn(async move {
            let mut v = Vec::with_capacity(n / 8);
            for _ in 0..n / 8 {
                let t = Instant::now();
                c.decrypt(req.clone()).await.expect("decrypt");
                v.push(t.elapsed());
            }
            v
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    let took = t0.elapsed();
    let count = all.len();
    report(
        "Decrypt x8 concurrent",
        all,
        Some(Duration::from_millis(10)),
    );
    println!(
        "{:<22} {:.0} calls/s",
        "Decrypt throughput",
        count as f64 / took.as_secs_f64()
    );
    let pid = p.pid().expect("provider pid");
    println!("{:<22} {} KiB", "provider RSS", rss_kib(pid));
}
