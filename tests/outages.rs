//! Faults between the provider and a real OpenBao, made by a TCP proxy on the wire or on the
//! server itself: redirects, resets and 503s, a slow OpenBao under concurrent load, revoked
//! tokens and persistent 403s, a refused login, outages the token does not outlive (JWT and
//! cert auth). Each test prints a `FIGURES` line that docs/reliability.md quotes.
pub mod common;

use std::time::{Duration, Instant};

use bao_kms_provider::pb;
use common::faults::{http_response, Canary, FaultProxy};
use common::outage::{
    self, first_decrypt_succeeds, jwt_provider_with_an_expiring_jwt, LoginCount, Outage,
    SHORT_LIVED, TOKEN_MAX_TTL,
};
use common::*;

fn with_deadline<T>(msg: T, d: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(d);
    r
}

async fn try_encrypt(p: &Provider) -> Result<pb::EncryptResponse, tonic::Status> {
    p.client()
        .await
        .encrypt(with_deadline(
            pb::EncryptRequest {
                plaintext: vec![3; 32],
                uid: "t".into(),
            },
            Duration::from_secs(3),
        ))
        .await
        .map(|r| r.into_inner())
}

fn logins(p: &Provider) -> usize {
    p.logs().matches("logged in to OpenBao").count()
}

#[tokio::test]
async fn redirects_to_unconfigured_origins_are_refused_and_carry_nothing_there() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let canary = Canary::start().await;
    let o = ProviderOptions::with(&proxy.addr(), &bao.jwt_path());
    let p = Provider::start(&o).await;

    // A 307 to another port of the same host: a different origin, not followed.
    for location in [
        format!(
            "http://127.0.0.1:{}/v1/transit/encrypt/k8s-etcd",
            canary.port
        ),
        // The same port with another scheme is another origin too (a downgrade when https).
        format!(
            "https://127.0.0.1:{}/v1/transit/encrypt/k8s-etcd",
            proxy.port
        ),
    ] {
        proxy.answer_next(http_response(
            "307 Temporary Redirect",
            &[("Location", location.clone())],
        ));
        let r = try_encrypt(&p).await;
        let err = r.expect_err("a redirect to another origin must not be followed");
        assert!(
            err.message().contains("not a configured openbao.address"),
            "{location}: {err:?}"
        );
    }
    // Bytes that were sent would arrive at once; let a little time pass before asserting none did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        canary.seen().is_empty(),
        "the other listener received {} bytes",
        canary.seen().len()
    );
    assert!(try_encrypt(&p).await.is_ok(), "{}", p.logs());
    eprintln!("FIGURES redirect: 2 refused redirects; canary received 0 bytes");
}

#[tokio::test]
async fn a_redirect_to_a_configured_node_is_followed() {
    let bao = Bao::start().await;
    let standby = FaultProxy::start(bao.port).await;
    let active = FaultProxy::start(bao.port).await;
    let list = format!("[\"{}\", \"{}\"]", standby.addr(), active.addr());
    let o = ProviderOptions::with(&list, &bao.jwt_path());
    let p = Provider::start(&o).await;
    let before = active.requests();
    standby.answer_next(http_response(
        "307 Temporary Redirect",
        &[(
            "Location",
            format!("{}/v1/transit/encrypt/k8s-etcd", active.addr()),
        )],
    ));
    // Probes run too; send calls until the canned answer has been used by one of them.
    let end = Instant::now() + Duration::from_secs(5);
    while standby.canned_pending() && Instant::now() < end {
        try_encrypt(&p).await.expect("encrypt across a redirect");
    }
    assert!(!standby.canned_pending());
    assert!(active.requests() > before);
    assert!(try_encrypt(&p).await.is_ok());
}

/// The provider keeps its OpenBao connections alive between calls and only polls one while a
/// call uses it (src/openbao/conn.rs). A connection the server closed meanwhile must be noticed
/// and replaced before the request goes out: no failed attempt, no retry, no error.
#[tokio::test]
async fn kept_alive_connections_closed_by_openbao_are_replaced_without_a_failed_attempt() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let o = ProviderOptions::with(&proxy.addr(), &bao.jwt_path());
    let p = Provider::start(&o).await;
    let (mut slowest, mut failed) = (Duration::ZERO, Vec::new());
    for round in 0..10 {
        assert!(try_encrypt(&p).await.is_ok(), "round {round}\n{}", p.logs());
        let open = proxy.open_connections();
        assert!(open > 0, "no kept-alive connection");
        let severed = proxy.severed();
        proxy.close_connections();
        let waited = Instant::now();
        // Connections opened meanwhile (the probe loop) stay open; the old ones must close.
        while proxy.severed() < severed + open {
            assert!(
                waited.elapsed() < Duration::from_secs(5),
                "proxy did not close"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Let the FIN arrive, as it would long before the next call after an idle timeout.
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A probe (every 300 ms here) whose request was in flight when the proxy closed may
        // fail, as it would against a real server; calls made after the close must not.
        let mark = p.logs().len();
        let started = Instant::now();
        let r = try_encrypt(&p).await;
        assert!(r.is_ok(), "round {round}: {r:?}\n{}", p.logs());
        slowest = slowest.max(started.elapsed());
        let logs = p.logs();
        let during = logs.get(mark..).unwrap_or_default();
        if during.contains("OpenBao request failed") {
            failed.push(format!("round {round}:\n{during}"));
        }
    }
    assert!(
        failed.is_empty(),
        "a closed kept-alive connection cost a failed attempt:\n{}",
        failed.join("\n")
    );
    eprintln!("FIGURES keep-alive: 10 calls right after OpenBao closed every connection, none failed an attempt; slowest {slowest:?}");
}

#[tokio::test]
async fn a_reset_or_a_503_once_is_retried_within_the_budget() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let o = ProviderOptions::with(&proxy.addr(), &bao.jwt_path());
    let p = Provider::start(&o).await;
    let mut figures = Vec::new();
    for fault in ["reset", "503", "502", "429"] {
        for _ in 0..5 {
            match fault {
                "reset" => proxy.reset_next(),
                "503" => proxy.answer_next(http_response("503 Service Unavailable", &[])),
                "502" => proxy.answer_next(http_response("502 Bad Gateway", &[])),
                _ => proxy.answer_next(http_response("429 Too Many Requests", &[])),
            }
            let started = Instant::now();
            let r = try_encrypt(&p).await;
            assert!(r.is_ok(), "{fault}: {r:?}\n{}", p.logs());
            figures.push((fault, started.elapsed()));
        }
    }
    let worst = figures.iter().map(|(_, d)| *d).max().unwrap_or_default();
    eprintln!("FIGURES retry: 20 faulted calls (reset, 503, 502, 429 x5) all succeeded; slowest {worst:?}");
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_openbao_under_200_concurrent_decrypts_answers_every_call_before_its_deadline() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let mut o = ProviderOptions::with(&proxy.addr(), &bao.jwt_path());
    o.openbao_extra = "max_connections = 16\n".into();
    let p = Provider::start(&o).await;
    let pid = p.pid().expect("pid");
    let e = try_encrypt(&p).await.expect("encrypt");
    let fds_before = fd_count(pid);
    let rss_before = proc_status(pid, "VmRSS:");

    proxy.set_delay(Duration::from_secs(5));
    let client = p.client().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut c = client.clone();
        let req = decrypt_request(&e);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.decrypt(with_deadline(req, Duration::from_secs(3))).await;
            (t.elapsed(), r.map(|_| ()).map_err(|s| s.code()))
        }));
    }
    // Sample resources while the calls are in flight: halfway through their 3 s deadline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fds_peak = fd_count(pid);
    let conns_peak = proxy.open_connections();
    let threads_peak = proc_status(pid, "Threads:");
    let mut worst = Duration::ZERO;
    let mut codes = std::collections::BTreeMap::new();
    for t in tasks {
        let (took, r) = t.await.expect("task");
        worst = worst.max(took);
        *codes.entry(format!("{r:?}")).or_insert(0) += 1;
    }
    let all_done = started.elapsed();
    assert!(
        worst < Duration::from_secs(3),
        "a call took {worst:?}: {codes:?}"
    );
    for code in codes.keys() {
        assert!(
            code.contains("Unavailable") || code == "Ok(())",
            "unexpected result {code}: {codes:?}"
        );
    }
    assert!(conns_peak <= 16 + 2, "{conns_peak} connections to OpenBao");

    proxy.set_delay(Duration::ZERO);
    let healed = Instant::now();
    let mut c = p.client().await;
    loop {
        let r = c
            .decrypt(with_deadline(decrypt_request(&e), Duration::from_secs(3)))
            .await;
        if r.is_ok() {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(5),
            "no recovery: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = healed.elapsed();
    wait_for(
        "fds back near the start",
        Duration::from_secs(10),
        || async move { fd_count(pid) <= fds_before + 20 },
    )
    .await;
    let fds_after = fd_count(pid);
    let rss_after = proc_status(pid, "VmRSS:");
    eprintln!(
        "FIGURES slow: 200 Decrypts with a 3 s deadline through a 5 s delay: slowest answer {worst:?}, all answered after {all_done:?}, results {codes:?}; OpenBao connections at peak {conns_peak} (max_connections 16); fds {fds_before} -> peak {fds_peak} -> {fds_after}; threads at peak {threads_peak}; RSS {rss_before} kB -> {rss_after} kB; first success {recovered:?} after the delay was removed"
    );
    assert!(
        recovered < Duration::from_secs(1),
        "recovery took {recovered:?}"
    );
    assert!(
        fds_after <= fds_before + 20,
        "fds {fds_before} -> {fds_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_under_50_concurrent_calls_costs_one_login_and_a_persistent_403_one_per_interval(
) {
    let bao = Bao::start().await;
    let o = ProviderOptions::new(&bao);
    let p = Provider::start(&o).await;
    assert_eq!(logins(&p), 1);
    let sample = try_encrypt(&p).await.expect("encrypt");

    bao.revoke_all_tokens().await;
    let client = p.client().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.encrypt(with_deadline(
                pb::EncryptRequest {
                    plaintext: vec![1; 32],
                    uid: "r".into(),
                },
                Duration::from_secs(3),
            ))
            .await
            .is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.expect("task"));
    }
    let after_revoke = logins(&p);
    assert_eq!(
        ok,
        50,
        "every call succeeds after one re-login:\n{}",
        p.logs()
    );
    assert_eq!(after_revoke, 2, "one login for 50 calls:\n{}", p.logs());

    // A persistent 403: the policy no longer grants Transit. Calls fail; logins stay bounded.
    bao.root(
        reqwest::Method::PUT,
        "sys/policies/acl/bao-kms-provider",
        Some(serde_json::json!({ "policy": "path \"sys/nothing\" { capabilities = [\"read\"] }" })),
    )
    .await;
    let started = Instant::now();
    let mut denied = 0;
    let mut c = p.client().await;
    while started.elapsed() < Duration::from_secs(3) {
        let r = c
            .decrypt(with_deadline(
                decrypt_request(&sample),
                Duration::from_secs(3),
            ))
            .await;
        if let Err(s) = r {
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            denied += 1;
        }
    }
    let during = logins(&p) - after_revoke;
    eprintln!(
        "FIGURES 403: 50 concurrent calls after a revocation: {ok} succeeded, 1 login; persistent 403: {denied} calls denied in 3 s with {during} login(s)"
    );
    assert!(
        during <= 1,
        "{during} logins during a persistent 403:\n{}",
        p.logs()
    );
    assert!(denied > 10);
}

#[tokio::test]
async fn a_login_refused_for_an_expired_jwt_is_unauthenticated_with_a_login_reason() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    bao.mint_jwt(dir.path());
    let jwt = dir.path().join("identity.jwt");
    let o = ProviderOptions::with(&bao.addr, &jwt);
    let p = Provider::start(&o).await;
    // A JWT that expired five minutes ago (beyond the JWT role's default 150 s leeway).
    bao.mint_jwt_for(dir.path(), -300);
    bao.revoke_all_tokens().await;
    let err = try_encrypt(&p).await.expect_err("login must fail");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    p.wait_status("healthz names the login", |s| s.healthz.contains("login"))
        .await;
    let s = p.status().await;
    eprintln!(
        "FIGURES login: Encrypt -> {:?}; healthz {:?}",
        err.code(),
        s.healthz
    );
}

#[tokio::test]
async fn an_outage_of_twice_the_token_max_ttl_with_the_jwt_replaced_during_it_costs_one_login() {
    let bao = Bao::start_with(&SHORT_LIVED).await;
    let (jwt, proxy, p, sample) = jwt_provider_with_an_expiring_jwt(&bao).await;
    let pid = p.pid();

    let away = Outage::begin(&proxy);
    away.until_token_expired(&bao, &p).await;
    // Replaced while OpenBao is away; the file on disk before was expired, so only a login that
    // re-reads it can succeed.
    bao.mint_jwt(jwt.dir.path());
    away.lasting(TOKEN_MAX_TTL * 2).await;
    let before = LoginCount::take(&p, &proxy).await;
    let (back, length) = away.end(&proxy);

    let first = first_decrypt_succeeds(&p, &sample, back).await;
    let after = LoginCount::take(&p, &proxy).await;
    p.wait_healthy().await;
    let healthy = back.elapsed();
    let settled = LoginCount::take(&p, &proxy).await;
    eprintln!(
        "FIGURES long outage (jwt, replaced during it): away {length:?} (token max TTL {TOKEN_MAX_TTL:?}); first Decrypt succeeded {first:?} after OpenBao was back; healthz ok after {healthy:?}; logins {} succeeded, {} failed, {} login requests at OpenBao",
        settled.succeeded - before.succeeded,
        settled.failed - before.failed,
        settled.requests - before.requests,
    );
    assert_eq!(after.succeeded - before.succeeded, 1, "{}", p.logs());
    assert_eq!(after.requests - before.requests, 1, "{}", p.logs());
    assert_eq!(after.failed, before.failed, "{}", p.logs());
    outage::assert_same_process(&p, pid);
}

#[tokio::test]
async fn an_outage_of_twice_the_token_max_ttl_with_cert_auth_costs_one_login() {
    let bao = Bao::start_tls_with(&SHORT_LIVED).await;
    let (cert, key) = bao.setup_cert_auth();
    let proxy = FaultProxy::start(bao.port).await;
    let address = format!("https://127.0.0.1:{}", proxy.port);
    let mut o = ProviderOptions::with_auth(&address, cert_file_auth(&cert, &key));
    // The dev server's certificate names localhost; the proxy is reached by its IP.
    o.openbao_extra = ca_file_line(&bao.ca_file()) + "tls_server_name = \"localhost\"\n";
    let p = Provider::start(&o).await;
    let pid = p.pid();
    let sample = try_encrypt(&p).await.expect("encrypt");

    let away = Outage::begin(&proxy);
    away.until_token_expired(&bao, &p).await;
    away.lasting(TOKEN_MAX_TTL * 2).await;
    let before = LoginCount::take(&p, &proxy).await;
    let (back, length) = away.end(&proxy);

    let first = first_decrypt_succeeds(&p, &sample, back).await;
    let after = LoginCount::take(&p, &proxy).await;
    p.wait_healthy().await;
    let healthy = back.elapsed();
    eprintln!(
        "FIGURES long outage (cert): away {length:?} (token max TTL {TOKEN_MAX_TTL:?}); first Decrypt succeeded {first:?} after OpenBao was back; healthz ok after {healthy:?}; logins {} succeeded, {} failed",
        after.succeeded - before.succeeded,
        after.failed - before.failed,
    );
    assert_eq!(after.succeeded - before.succeeded, 1, "{}", p.logs());
    assert_eq!(after.failed, before.failed, "{}", p.logs());
    assert!(p.logs().contains("method=\"cert\""), "{}", p.logs());
    outage::assert_same_process(&p, pid);
}

/// The JWT on disk expires during the outage and its replacement is written only after OpenBao
/// is back. Until then every call fails `Unauthenticated` with OpenBao's reason; the first call
/// after the new file is written succeeds, with one login, in the same process.
#[tokio::test]
async fn a_jwt_that_expired_during_the_outage_and_is_replaced_after_it_is_used_by_the_next_call() {
    let bao = Bao::start_with(&SHORT_LIVED).await;
    let (jwt, proxy, p, sample) = jwt_provider_with_an_expiring_jwt(&bao).await;
    let pid = p.pid();

    let away = Outage::begin(&proxy);
    away.until_token_expired(&bao, &p).await;
    away.lasting(TOKEN_MAX_TTL * 2).await;
    let at_back = LoginCount::take(&p, &proxy).await;
    let (back, length) = away.end(&proxy);

    // OpenBao is back but only an expired JWT is on disk: a clear refusal, every call.
    p.wait_status("healthz names the refused login", |s| {
        s.healthz.contains("OpenBao login") && s.healthz.contains("expired")
    })
    .await;
    let mut refused = 0;
    for _ in 0..3 {
        let err = outage::try_decrypt(&p, &sample)
            .await
            .expect_err("no valid credential yet");
        assert_eq!(
            err.code(),
            tonic::Code::Unauthenticated,
            "{err:?}\n{}",
            p.logs()
        );
        assert!(
            err.message().contains("OpenBao refused the login")
                && err.message().contains("expired"),
            "{err:?}"
        );
        refused += 1;
    }
    let before = LoginCount::take(&p, &proxy).await;
    bao.mint_jwt(jwt.dir.path());
    let written = Instant::now();

    let first = first_decrypt_succeeds(&p, &sample, written).await;
    let after = LoginCount::take(&p, &proxy).await;
    p.wait_healthy().await;
    let healthy = written.elapsed();
    eprintln!(
        "FIGURES long outage (jwt expired, replaced after): away {length:?}; {refused} calls refused (Unauthenticated) with only the expired JWT, {:?} after OpenBao was back, {} refused logins meanwhile ({} succeeded); first Decrypt succeeded {first:?} after the new JWT was written; healthz ok after {healthy:?}; logins since the new JWT {} succeeded, {} failed, {} login requests at OpenBao",
        written - back,
        before.failed - at_back.failed,
        before.succeeded - at_back.succeeded,
        after.succeeded - before.succeeded,
        after.failed - before.failed,
        after.requests - before.requests,
    );
    assert_eq!(after.succeeded - before.succeeded, 1, "{}", p.logs());
    assert_eq!(before.succeeded, at_back.succeeded, "{}", p.logs());
    outage::assert_same_process(&p, pid);
}

/// A new JWT written while a login with the expired one is in flight (OpenBao held slow by the
/// proxy): the call made after the write joins that login, which is refused, and then logs in
/// once more with the new file instead of failing.
#[tokio::test]
async fn a_jwt_replaced_while_a_refused_login_is_in_flight_is_used_by_the_next_call() {
    let bao = Bao::start_with(&SHORT_LIVED).await;
    let jwt = bao.own_jwt();
    let proxy = FaultProxy::start(bao.port).await;
    let p = Provider::start(&ProviderOptions::with(&proxy.addr(), &jwt.path)).await;
    let sample = try_encrypt(&p).await.expect("encrypt");
    bao.mint_jwt_for(jwt.dir.path(), -1);
    outage::token_expired(&bao, &p).await;

    // Every answer 600 ms late; without a token the only requests are the probe's logins.
    proxy.set_response_delay(Duration::from_millis(600));
    wait_for("a login in flight", Duration::from_secs(10), || async {
        proxy.in_flight() > 0
    })
    .await;
    bao.mint_jwt(jwt.dir.path());
    let written = Instant::now();
    let first = first_decrypt_succeeds(&p, &sample, written).await;
    let retried = p.logs().contains("credential file replaced since");
    eprintln!(
        "FIGURES JWT replaced during a refused login: first Decrypt succeeded {first:?} after the write (OpenBao answering 600 ms late); joined the refused login and retried: {retried}"
    );
}
