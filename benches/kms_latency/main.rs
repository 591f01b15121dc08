//! `make bench`: the provider side by side with direct Transit calls, in one run, against a real
//! OpenBao dev server on loopback (TLS as in production, plain http for reference).
//!
//! Each round restarts the release provider (timing exec -> READY=1 on a NOTIFY_SOCKET the bench
//! owns), then drives Status, Decrypt and Encrypt through the unix socket and the same Transit
//! calls directly (the baseline, `direct`) at 1, 8 and 64 concurrent callers, recording p50/p99,
//! throughput, CPU per call of the provider, OpenBao and the bench (per-process CPU clocks) and
//! RSS. Prints a table and writes target/bench/results.json. Not a test: figures depend on the
//! machine; the ratios are what docs/performance.md tracks.
//!
//! Environment: QUICK=1 for a short smoke run; BENCH_ROUNDS (default 5) and BENCH_SECONDS
//! (measured seconds per scenario, default 1.0) override; BENCH_OPS (e.g. "Decrypt,Status") and
//! BENCH_CALLERS (e.g. "1") narrow the run, to hold one load steady while profiling;
//! BENCH_KEEP_LOGS=DIR keeps each provider process's log.
#[path = "../../tests/common/mod.rs"]
pub mod common;
mod direct;
mod launch;
mod load;
mod procs;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bao_kms_provider::kms::client::{connect, KmsClient};
use bao_kms_provider::{keys, kms, pb};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

use common::Bao;
use direct::Direct;
use launch::BenchProvider;
use load::Call;
use procs::{cpu_seconds, loadavg, vm_kib, Machine, NotifySocket};
use report::{Measurement, Round, Startup, CALLERS, TRANSPORTS};

struct Settings {
    rounds: usize,
    seconds: Duration,
    warmup: Duration,
    quick: bool,
    ops: Option<Vec<String>>,
    callers: Vec<usize>,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let num = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
        };
        let seconds = num("BENCH_SECONDS").unwrap_or(if quick { 0.2 } else { 1.0 });
        Settings {
            rounds: num("BENCH_ROUNDS").map_or(5, |r| r.clamp(1.0, 1000.0) as usize),
            seconds: Duration::from_secs_f64(seconds.clamp(0.05, 3600.0)),
            warmup: Duration::from_secs_f64((seconds / 4.0).clamp(0.05, 0.25)),
            quick,
            ops: std::env::var("BENCH_OPS")
                .ok()
                .map(|v| v.split(',').map(|o| o.trim().to_owned()).collect()),
            callers: std::env::var("BENCH_CALLERS")
                .ok()
                .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
                .filter(|c: &Vec<usize>| !c.is_empty())
                .unwrap_or_else(|| CALLERS.to_vec()),
        }
    }
}

/// One OpenBao (https or http), the provider in front of it and the direct baseline client.
struct Target {
    name: &'static str,
    bao: Bao,
    provider: BenchProvider,
    direct: Arc<Direct>,
}

const SEED: [u8; 32] = [7u8; 32];
/// Idle time before each timed start (the provider's, and the direct sequence's).
const START_GAP: Duration = Duration::from_millis(300);

/// Decrypt callers kept busy while one caller measures Status ("StatusUnderLoad").
const BACKGROUND_CALLERS: usize = 64;

impl Target {
    async fn start(name: &'static str, notify: &NotifySocket) -> Target {
        let bao = if name == "https" {
            Bao::start_tls().await
        } else {
            Bao::start().await
        };
        let (mut provider, raised) = BenchProvider::new(&bao);
        if !raised {
            println!("({name}: this build has no openbao.max_connections; no cap to raise)");
        }
        // First start creates the key registry; restarts in the rounds are the timed ones.
        provider.start(notify);
        let ca = (name == "https").then(|| bao.ca_file());
        let direct = Direct::login(&bao.addr, ca.as_deref(), &bao.jwt_path()).await;
        Target {
            name,
            bao,
            provider,
            direct: Arc::new(direct),
        }
    }
}

/// The five calls of a round, built from a fresh Encrypt through the provider.
struct Calls {
    status: Call,
    decrypt: Call,
    encrypt: Call,
    direct_decrypt: Call,
    direct_encrypt: Call,
}

async fn calls(kms: &KmsClient, direct: &Arc<Direct>) -> Calls {
    let mut c = kms.clone();
    let status = c
        .status(pb::StatusRequest {})
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(status.healthz, "ok", "provider not healthy: {status:?}");
    let enc = c
        .encrypt(pb::EncryptRequest {
            plaintext: SEED.to_vec(),
            uid: "bench".into(),
        })
        .await
        .expect("Encrypt")
        .into_inner();
    assert_eq!(enc.key_id, status.key_id, "Encrypt and Status disagree");
    let version: u32 = enc
        .annotations
        .get(kms::ANNOTATION_KEY_VERSION)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .expect("key version annotation");
    let ciphertext: Arc<str> = String::from_utf8(enc.ciphertext.clone())
        .expect("Transit ciphertext")
        .into();
    let aad: Arc<str> = STANDARD.encode(keys::associated_data(&enc.key_id)).into();
    let seed_b64: Arc<str> = STANDARD.encode(SEED).into();
    let decrypt_req = pb::DecryptRequest {
        ciphertext: enc.ciphertext,
        uid: "bench".into(),
        key_id: enc.key_id,
        annotations: enc.annotations,
    };

    let k = kms.clone();
    let status: Call = Arc::new(move || {
        let mut k = k.clone();
        Box::pin(async move {
            k.status(pb::StatusRequest {})
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    });
    let k = kms.clone();
    let decrypt: Call = Arc::new(move || {
        let (mut k, req) = (k.clone(), decrypt_req.clone());
        Box::pin(async move {
            let r = k.decrypt(req).await.map_err(|e| e.to_string())?;
            if r.get_ref().plaintext == SEED {
                Ok(())
            } else {
                Err("Decrypt returned other bytes".into())
            }
        })
    });
    let k = kms.clone();
    let encrypt: Call = Arc::new(move || {
        let mut k = k.clone();
        Box::pin(async move {
            k.encrypt(pb::EncryptRequest {
                plaintext: SEED.to_vec(),
                uid: "bench".into(),
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    });
    // BENCH_DIRECT_GAP_US: an experiment, not a figure. Each direct Decrypt first leaves the
    // machine idle this long (a blocking sleep, so nothing runs), as the provider's own gRPC hop
    // does between OpenBao requests; it shows what OpenBao's CPU per request does when its
    // requests arrive further apart (docs/performance.md).
    let gap = std::env::var("BENCH_DIRECT_GAP_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_micros);
    let (d, ct, a) = (direct.clone(), ciphertext, aad.clone());
    let direct_decrypt: Call = Arc::new(move || {
        let (d, ct, a) = (d.clone(), ct.clone(), a.clone());
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        Box::pin(async move {
            match d.decrypt(&ct, &a).await? {
                32 => Ok(()),
                n => Err(format!("direct decrypt returned {n} bytes")),
            }
        })
    });
    let (d, a) = (direct.clone(), aad);
    let direct_encrypt: Call = Arc::new(move || {
        let (d, a, p) = (d.clone(), a.clone(), seed_b64.clone());
        Box::pin(async move { d.encrypt(&p, &a, version).await.map(|_| ()) })
    });
    Calls {
        status,
        decrypt,
        encrypt,
        direct_decrypt,
        direct_encrypt,
    }
}

struct Scenario<'a> {
    path: &'static str,
    op: &'static str,
    call: &'a Call,
    /// Kept running by 64 other callers while this scenario is measured.
    background: Option<&'a Call>,
}

async fn measure(
    t: &Target,
    s: &Scenario<'_>,
    callers: usize,
    settings: &Settings,
    http: &reqwest::Client,
) -> Measurement {
    let background = s
        .background
        .map(|b| load::Background::start(b, BACKGROUND_CALLERS));
    load::run(s.call, callers, settings.warmup).await;
    let (ppid, bpid) = (t.provider.pid(), t.bao.pid());
    let requests_before = if s.path == "provider" {
        Some(t.provider.openbao_requests(http).await)
    } else {
        None
    };
    let cpu = || (cpu_seconds(ppid), cpu_seconds(bpid), cpu_seconds(0));
    let before = cpu();
    let run = load::run(s.call, callers, settings.seconds).await;
    let after = cpu();
    let requests_after = if s.path == "provider" {
        Some(t.provider.openbao_requests(http).await)
    } else {
        None
    };
    if let Some(b) = background {
        b.stop().await;
    }
    let n = run.calls().max(1) as f64;
    // With a background load, CPU and OpenBao calls belong to the background, not to this call.
    let alone = s.background.is_none();
    let per_call = |a: f64, b: f64| if alone { (b - a) * 1e6 / n } else { f64::NAN };
    Measurement {
        transport: t.name,
        path: s.path,
        op: s.op,
        callers,
        calls: run.calls(),
        errors: run.errors,
        first_error: run.first_error.clone(),
        seconds: run.elapsed.as_secs_f64(),
        throughput: run.throughput(),
        p50_ms: run.percentile_ms(0.5),
        p99_ms: run.percentile_ms(0.99),
        provider_cpu_us: per_call(before.0, after.0),
        openbao_cpu_us: per_call(before.1, after.1),
        client_cpu_us: per_call(before.2, after.2),
        openbao_calls: requests_before
            .zip(requests_after)
            .filter(|_| alone)
            .map(|(b, a)| (a - b) / n),
    }
}

/// Restart the provider (timed), then every scenario at every concurrency. Odd rounds run the
/// direct baseline before the provider, so drift within a round does not favour either.
async fn round(
    t: &mut Target,
    index: usize,
    notify: &NotifySocket,
    settings: &Settings,
    http: &reqwest::Client,
    out: &mut Round,
) {
    t.provider.stop();
    // The same quiet gap before the direct start-up sequence and before the provider's start:
    // OpenBao's first answers after idling are what both wait for.
    tokio::time::sleep(START_GAP).await;
    let ca = (t.name == "https").then(|| t.bao.ca_file());
    let direct_start =
        direct::startup_sequence(&t.bao.addr, ca.as_deref(), &t.bao.jwt_path()).await;
    tokio::time::sleep(START_GAP).await;
    let ready = t.provider.start(notify);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = t.provider.pid();
    if settings.ops.is_some() {
        // Narrowed runs are for profiling: say which processes to attach to.
        println!(
            "{}: provider pid {pid}, OpenBao pid {}",
            t.name,
            t.bao.pid()
        );
    }
    let idle_rss_kib = vm_kib(pid, "VmRSS");
    let kms = connect(&t.provider.socket)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", t.provider.log()));
    let c = calls(&kms, &t.direct).await;
    let mut order = vec![
        Scenario {
            path: "provider",
            op: "Status",
            call: &c.status,
            background: None,
        },
        Scenario {
            path: "provider",
            op: "Decrypt",
            call: &c.decrypt,
            background: None,
        },
        Scenario {
            path: "direct",
            op: "Decrypt",
            call: &c.direct_decrypt,
            background: None,
        },
        Scenario {
            path: "provider",
            op: "Encrypt",
            call: &c.encrypt,
            background: None,
        },
        Scenario {
            path: "direct",
            op: "Encrypt",
            call: &c.direct_encrypt,
            background: None,
        },
    ];
    if index % 2 == 1 {
        order.swap(1, 2);
        order.swap(3, 4);
    }
    if let Some(ops) = &settings.ops {
        order.retain(|s| ops.iter().any(|o| o == s.op));
    }
    for &callers in &settings.callers {
        for s in &order {
            let m = measure(t, s, callers, settings, http).await;
            out.measurements.push(m);
        }
    }
    if settings
        .ops
        .as_ref()
        .is_none_or(|o| o.iter().any(|o| o == "StatusUnderLoad"))
    {
        let s = Scenario {
            path: "provider",
            op: "StatusUnderLoad",
            call: &c.status,
            background: Some(&c.decrypt),
        };
        out.measurements
            .push(measure(t, &s, 1, settings, http).await);
    }
    out.startups.push(Startup {
        transport: t.name,
        ready_ms: ready.as_secs_f64() * 1e3,
        direct_start_ms: direct_start.as_secs_f64() * 1e3,
        idle_rss_kib,
        peak_rss_kib: vm_kib(pid, "VmHWM"),
        end_rss_kib: vm_kib(pid, "VmRSS"),
    });
}

fn results_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join("target"))
        .join("bench/results.json")
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args([
            "-C",
            &common::repo_root().to_string_lossy(),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let settings = Settings::from_env();
    let machine = Machine::probe();
    println!(
        "bao-kms-provider vs direct Transit: {} rounds x {:.2}s per scenario{}, callers {:?}; {} cores ({}), load {:.2}",
        settings.rounds,
        settings.seconds.as_secs_f64(),
        if settings.quick { " (QUICK)" } else { "" },
        settings.callers,
        machine.nproc,
        machine.cpu_model,
        loadavg()
    );
    let notify_dir = tempfile::tempdir().expect("tempdir");
    let notify = NotifySocket::bind(notify_dir.path());
    let http = common::http();
    let mut targets = Vec::new();
    for name in TRANSPORTS {
        targets.push(Target::start(name, &notify).await);
    }
    let mut rounds = Vec::new();
    for i in 0..settings.rounds {
        let mut r = Round {
            loadavg_start: loadavg(),
            ..Round::default()
        };
        for t in &mut targets {
            round(t, i, &notify, &settings, &http, &mut r).await;
        }
        r.loadavg_end = loadavg();
        let https_ready = r.startups.first().map_or(f64::NAN, |s| s.ready_ms);
        println!(
            "round {}/{} done (load {:.2} -> {:.2}, https exec->READY {:.1} ms)",
            i + 1,
            settings.rounds,
            r.loadavg_start,
            r.loadavg_end,
            https_ready
        );
        rounds.push(r);
    }
    for t in &mut targets {
        t.provider.stop();
    }
    report::print(&rounds);
    let header = json!({
        "bench": "kms_latency",
        "commit": git_commit(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "machine": {
            "nproc": machine.nproc,
            "cpu_model": machine.cpu_model,
            "kernel": machine.kernel,
        },
        "settings": {
            "rounds": settings.rounds,
            "seconds_per_scenario": settings.seconds.as_secs_f64(),
            "warmup_seconds": settings.warmup.as_secs_f64(),
            "quick": settings.quick,
            "callers": CALLERS,
            "kms_client": "one gRPC channel (one HTTP/2 connection) shared by all callers, as kube-apiserver",
            "direct_client": "reqwest + rustls (ring) as src/openbao/http.rs builds it; HTTP/1.1 keep-alive pool",
        },
    });
    let path = results_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create target/bench");
    }
    let doc = report::to_json(&rounds, header);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).expect("results JSON"),
    )
    .expect("write results.json");
    println!("\nwrote {}", path.display());
}
