//! Decrypt storms, as after kube-apiserver restarts (one Decrypt per DEK seed it has not
//! cached), against a real OpenBao: slow behind the fault proxy, and behind a rate-limit quota.
//! The provider must not multiply OpenBao's load with retries, must spend each call's budget
//! on requests that can still be answered in time, and must spread calls over a quota instead
//! of giving up. Each test prints a `FIGURES` line that docs/reliability.md quotes.
pub mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bao_kms_provider::kms::client::KmsClient;
use bao_kms_provider::pb;
use common::faults::FaultProxy;
use common::*;
use serde_json::json;

/// kube-apiserver's default KMS call timeout.
const DEADLINE: Duration = Duration::from_secs(3);

/// How late an answer may reach the test after its deadline (scheduling on a loaded machine).
const SLACK: Duration = Duration::from_millis(300);

fn with_deadline<T>(msg: T, d: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(d);
    r
}

/// A seed and its real ciphertext from the provider's Encrypt.
type Sealed = (Vec<u8>, pb::EncryptResponse);

/// `n` distinct seeds (as distinct DEKs are), each encrypted by the provider.
async fn ciphertexts(c: &mut KmsClient, n: usize) -> Vec<Sealed> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let seed = [i as u8, (i >> 8) as u8].repeat(16);
        let e = encrypt(c, &seed).await;
        out.push((seed, e));
    }
    out
}

/// How a storm went: per-result counts and the slowest answer.
struct Storm {
    ok: usize,
    codes: BTreeMap<String, usize>,
    slowest: Duration,
    took: Duration,
    /// Calls that failed, to try again.
    failed: Vec<Sealed>,
}

/// One concurrent Decrypt per seed, each with a 3 s deadline.
async fn storm(client: &KmsClient, seeds: &[Sealed]) -> Storm {
    let started = Instant::now();
    let tasks: Vec<_> = seeds
        .iter()
        .map(|sealed| {
            let mut c = client.clone();
            let sealed = sealed.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = c
                    .decrypt(with_deadline(decrypt_request(&sealed.1), DEADLINE))
                    .await;
                let r = match r {
                    Ok(answer) if answer.get_ref().plaintext == sealed.0 => Ok(()),
                    Ok(_) => Err("wrong plaintext".to_owned()),
                    Err(s) => Err(format!("{:?}", s.code())),
                };
                (t.elapsed(), r, sealed)
            })
        })
        .collect();
    let mut out = Storm {
        ok: 0,
        codes: BTreeMap::new(),
        slowest: Duration::ZERO,
        took: Duration::ZERO,
        failed: Vec::new(),
    };
    for t in tasks {
        let (took, r, sealed) = t.await.expect("task");
        out.slowest = out.slowest.max(took);
        let key = match &r {
            Ok(()) => "Ok".to_owned(),
            Err(code) => code.clone(),
        };
        *out.codes.entry(key).or_insert(0) += 1;
        match r {
            Ok(()) => out.ok += 1,
            Err(_) => out.failed.push(sealed),
        }
    }
    out.took = started.elapsed();
    out
}

/// Why calls failed, by the error class the provider logged (`kms call failed`).
fn failure_classes(p: &Provider) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in p.logs().lines().filter(|l| l.contains("kms call failed")) {
        let class = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("error_class="))
            .unwrap_or("?");
        *out.entry(class.trim_matches('"').to_owned()).or_insert(0) += 1;
    }
    out
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `openbao_kms_openbao_requests_total` for one operation and status.
async fn requests_metric(p: &Provider, operation: &str, status: &str) -> u64 {
    let (_, body) = p.http_get(p.metrics_port, "/metrics").await;
    let (op, st) = (
        format!("operation=\"{operation}\""),
        format!("status=\"{status}\""),
    );
    body.lines()
        .filter(|l| l.starts_with("openbao_kms_openbao_requests_total{"))
        .filter(|l| l.contains(&op) && l.contains(&st))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A Decrypt with a fresh 3 s budget succeeds within `within` of now.
async fn recovers_within(p: &Provider, e: &pb::EncryptResponse, within: Duration) -> Duration {
    let healed = Instant::now();
    let mut c = p.client().await;
    loop {
        let r = c.decrypt(with_deadline(decrypt_request(e), DEADLINE)).await;
        if r.is_ok() {
            return healed.elapsed();
        }
        assert!(
            healed.elapsed() < within,
            "no recovery within {within:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_openbao_gets_about_one_request_per_call_and_every_call_that_can_succeed_does() {
    const CALLS: usize = 200;
    // 200 calls of 1 s each under a 3 s deadline fit in two rounds only with more than 100
    // slots: a third round would start after 2 s and end after the deadline.
    const CAP: usize = 128;
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let mut o = ProviderOptions::with(&proxy.addr(), &bao.jwt_path());
    o.openbao_timeout = "2s".into();
    o.openbao_extra = format!("max_connections = {CAP}\n");
    let p = Provider::start(&o).await;
    let pid = p.pid().expect("pid");
    let mut c = p.client().await;
    let seeds = ciphertexts(&mut c, CALLS).await;
    let fds_before = fd_count(pid);

    let mut figures = Vec::new();
    for (delay, min_ok) in [(Duration::from_secs(5), 0), (Duration::from_secs(1), 170)] {
        proxy.set_response_delay(delay);
        let decrypts_before = proxy.requests_to("/decrypt/");
        proxy.take_peak_in_flight();
        proxy.take_peak_connections();
        let result = storm(&c, &seeds).await;
        let peak_conns = proxy.take_peak_connections();
        let sent = proxy.requests_to("/decrypt/") - decrypts_before;
        let per_call = sent as f64 / CALLS as f64;
        let peak_in_flight = proxy.take_peak_in_flight();
        proxy.set_response_delay(Duration::ZERO);
        let recovered = recovers_within(&p, &seeds[0].1, Duration::from_secs(5)).await;
        figures.push(format!(
            "delay {delay:?}: {} of {CALLS} ok, {sent} OpenBao Decrypts ({per_call:.2} per call), slowest answer {:?}, storm over after {:?}, results {:?}, peak in flight at OpenBao {peak_in_flight}, peak connections {peak_conns} (cap {CAP}), first success {recovered:?} after OpenBao was fast again; failures so far by class {:?}",
            result.ok, result.slowest, result.took, result.codes, failure_classes(&p)
        ));
        assert!(
            per_call <= 1.1,
            "{per_call:.2} OpenBao requests per call: {figures:?}"
        );
        assert!(
            result.ok >= min_ok,
            "{} of {CALLS} succeeded: {figures:?}",
            result.ok
        );
        assert!(
            result.slowest <= DEADLINE + SLACK,
            "a call took {:?}: {figures:?}",
            result.slowest
        );
        for code in result.codes.keys() {
            assert!(
                code == "Ok" || code == "Unavailable",
                "unexpected result {code}: {figures:?}"
            );
        }
        assert!(
            peak_in_flight <= CAP && peak_conns <= CAP,
            "{peak_in_flight} in flight, {peak_conns} connections (cap {CAP}): {figures:?}"
        );
        assert!(
            recovered < Duration::from_secs(1),
            "recovery took {recovered:?}: {figures:?}"
        );
    }
    // Idle keep-alive connections stay open, up to the cap; nothing else is left behind.
    let fds_after = fd_count(pid);
    assert!(
        fds_after <= fds_before + CAP + 20,
        "fds {fds_before} -> {fds_after}: {figures:?}"
    );
    eprintln!(
        "FIGURES slow storm: {}; fds {fds_before} -> {fds_after}",
        figures.join("; ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_quota_spreads_a_storm_over_its_budget_and_keeps_the_provider_healthy() {
    const CALLS: usize = 100;
    // Renewals are due every 4 s (two thirds of the TTL), so some fall in the storms.
    let bao = Bao::start_with(&[("TOKEN_TTL", "6s"), ("TOKEN_MAX_TTL", "1h")]).await;
    let proxy = FaultProxy::start(bao.port).await;
    let mut o = ProviderOptions::with(&proxy.addr(), &bao.jwt_path());
    o.openbao_timeout = "2s".into();
    let p = Provider::start(&o).await;
    let mut c = p.client().await;
    let seeds = ciphertexts(&mut c, CALLS).await;

    let mut figures = Vec::new();
    let renewals_before = requests_metric(&p, "renew", "200").await;
    for headers in [false, true] {
        bao.root(
            reqwest::Method::POST,
            "sys/quotas/config",
            Some(json!({ "enable_rate_limit_response_headers": headers })),
        )
        .await;
        // A fresh quota for each storm, so each starts with the quota's full allowance.
        let quota = format!("sys/quotas/rate-limit/kms-storm-{headers}");
        bao.root(
            reqwest::Method::POST,
            &quota,
            Some(json!({ "rate": 20, "path": "transit/" })),
        )
        .await;
        let probes_before = requests_metric(&p, "read_key", "200").await;
        let decrypts_before = proxy.requests_to("/decrypt/");
        let result = storm(&c, &seeds).await;
        let sent = proxy.requests_to("/decrypt/") - decrypts_before;
        let per_call = sent as f64 / CALLS as f64;
        let probes = requests_metric(&p, "read_key", "200").await - probes_before;
        let limited = requests_metric(&p, "decrypt", "rate_limited").await
            + requests_metric(&p, "decrypt", "retry_after").await;
        let refused = requests_metric(&p, "decrypt", "deadline_too_short").await;

        // kube-apiserver tries a failed Decrypt again: the storm ends once every call got in.
        let retried_from = Instant::now();
        let mut left = result.failed.clone();
        let mut rounds = 0;
        while !left.is_empty() {
            assert!(
                retried_from.elapsed() < Duration::from_secs(30),
                "{} calls still failing after 30 s of retries: {figures:?}",
                left.len()
            );
            rounds += 1;
            left = storm(&c, &left).await.failed;
        }
        bao.root(reqwest::Method::DELETE, &quota, None).await;
        figures.push(format!(
            "headers {headers}: {} of {CALLS} ok within {:?} (slowest answer {:?}), {sent} OpenBao Decrypts ({per_call:.2} per call), results {:?}, decrypt 429s so far {limited}, not sent for lack of budget so far {refused}, {probes} probes read the key meanwhile; the rest succeeded after {rounds} more rounds ({:?}); failures so far by class {:?}",
            result.ok,
            result.took,
            result.slowest,
            result.codes,
            retried_from.elapsed(),
            failure_classes(&p)
        ));
        assert!(
            result.ok >= 50,
            "{} of {CALLS} succeeded: {figures:?}",
            result.ok
        );
        assert!(
            per_call <= 2.0,
            "{per_call:.2} OpenBao requests per call: {figures:?}"
        );
        assert!(
            result.slowest <= DEADLINE + SLACK,
            "a call took {:?}: {figures:?}",
            result.slowest
        );
        assert!(probes > 0, "no probe read the key: {figures:?}");
    }
    let renewals = requests_metric(&p, "renew", "200").await - renewals_before;
    eprintln!(
        "FIGURES quota: {}; {renewals} token renewals meanwhile",
        figures.join("; ")
    );
    assert!(
        renewals > 0,
        "no token renewal during the storms: {figures:?}"
    );
    p.wait_healthy().await;
}
