//! Results: one measurement per (transport, path, op, callers) and round; medians with min–max
//! across rounds; the target ratios (docs/performance.md); the printed table and target/bench/results.json.
use serde_json::{json, Map, Value};

pub const TRANSPORTS: [&str; 2] = ["https", "http"];
pub const CALLERS: [usize; 3] = [1, 8, 64];

#[derive(Debug, Clone)]
pub struct Measurement {
    pub transport: &'static str,
    /// "provider" (through the KMS socket) or "direct" (Transit over HTTP(S), the baseline).
    pub path: &'static str,
    pub op: &'static str,
    pub callers: usize,
    pub calls: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub provider_cpu_us: f64,
    pub openbao_cpu_us: f64,
    pub client_cpu_us: f64,
    /// OpenBao requests the provider made per call (provider path only).
    pub openbao_calls: Option<f64>,
}

impl Measurement {
    fn to_json(&self) -> Value {
        json!({
            "calls": self.calls,
            "errors": self.errors,
            "first_error": self.first_error,
            "seconds": self.seconds,
            "throughput_per_s": self.throughput,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "provider_cpu_us_per_call": self.provider_cpu_us,
            "openbao_cpu_us_per_call": self.openbao_cpu_us,
            "client_cpu_us_per_call": self.client_cpu_us,
            "openbao_calls_per_call": self.openbao_calls,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Startup {
    pub transport: &'static str,
    pub ready_ms: f64,
    /// The same start-up requests by a plain client from nothing (`direct::startup_sequence`).
    pub direct_start_ms: f64,
    pub idle_rss_kib: u64,
    pub peak_rss_kib: u64,
    pub end_rss_kib: u64,
}

#[derive(Debug, Default)]
pub struct Round {
    pub loadavg_start: f64,
    pub loadavg_end: f64,
    pub measurements: Vec<Measurement>,
    pub startups: Vec<Startup>,
}

impl Round {
    fn get(&self, transport: &str, path: &str, op: &str, callers: usize) -> Option<&Measurement> {
        self.measurements.iter().find(|m| {
            m.transport == transport && m.path == path && m.op == op && m.callers == callers
        })
    }

    fn startup(&self, transport: &str) -> Option<&Startup> {
        self.startups.iter().find(|s| s.transport == transport)
    }
}

/// Median, min and max; NaN-free input expected (NaNs are dropped).
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

impl Spread {
    fn to_json(self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

/// One figure of the target table, computed per round.
struct Figure {
    key: &'static str,
    label: &'static str,
    /// `(bound, at_most)`: the target is value <= bound (or >= when !at_most); None = report only.
    target: Option<(f64, bool)>,
    value: fn(&Round, &str) -> Option<f64>,
}

fn overhead(r: &Round, t: &str, op: &str) -> Option<f64> {
    let p = r.get(t, "provider", op, 1)?.p50_ms;
    let s = r.get(t, "provider", "Status", 1)?.p50_ms;
    let d = r.get(t, "direct", op, 1)?.p50_ms;
    Some((p - s) / d)
}

fn cpu_over_status(r: &Round, t: &str, callers: usize) -> Option<f64> {
    Some(
        r.get(t, "provider", "Decrypt", callers)?.provider_cpu_us
            / r.get(t, "provider", "Status", callers)?.provider_cpu_us,
    )
}

fn bao_cpu(r: &Round, t: &str, op: &str, callers: usize) -> Option<f64> {
    Some(
        r.get(t, "provider", op, callers)?.openbao_cpu_us
            / r.get(t, "direct", op, callers)?.openbao_cpu_us,
    )
}

fn throughput(r: &Round, t: &str, op: &str, callers: usize) -> Option<f64> {
    Some(
        r.get(t, "provider", op, callers)?.throughput / r.get(t, "direct", op, callers)?.throughput,
    )
}

const FIGURES: &[Figure] = &[
    Figure {
        key: "decrypt_overhead_vs_direct",
        label: "Decrypt (provider p50 - Status p50) / direct p50, 1 caller",
        target: Some((1.1, true)),
        value: |r, t| overhead(r, t, "Decrypt"),
    },
    Figure {
        key: "encrypt_overhead_vs_direct",
        label: "Encrypt (provider p50 - Status p50) / direct p50, 1 caller",
        target: None,
        value: |r, t| overhead(r, t, "Encrypt"),
    },
    Figure {
        key: "provider_cpu_decrypt_over_status",
        label: "provider CPU per Decrypt / per Status, 1 caller",
        target: Some((2.5, true)),
        value: |r, t| cpu_over_status(r, t, 1),
    },
    Figure {
        key: "provider_cpu_decrypt_over_status_8",
        label: "provider CPU per Decrypt / per Status, 8 callers",
        target: Some((2.5, true)),
        value: |r, t| cpu_over_status(r, t, 8),
    },
    Figure {
        // The provider's own OpenBao call against the whole of a plain client's (whose CPU
        // includes the load generator): the share of the Decrypt cost the provider can cut.
        key: "provider_call_cpu_over_plain_client",
        label: "provider CPU per Decrypt - per Status / direct client's, 1 caller",
        target: None,
        value: |r, t| {
            let p = r.get(t, "provider", "Decrypt", 1)?.provider_cpu_us;
            let s = r.get(t, "provider", "Status", 1)?.provider_cpu_us;
            Some((p - s) / r.get(t, "direct", "Decrypt", 1)?.client_cpu_us)
        },
    },
    Figure {
        key: "openbao_cpu_decrypt_provider_over_direct",
        label: "OpenBao CPU per Decrypt via provider / direct, 1 caller",
        target: Some((1.05, true)),
        value: |r, t| bao_cpu(r, t, "Decrypt", 1),
    },
    Figure {
        key: "openbao_cpu_decrypt_provider_over_direct_8",
        label: "OpenBao CPU per Decrypt via provider / direct, 8 callers",
        target: Some((1.05, true)),
        value: |r, t| bao_cpu(r, t, "Decrypt", 8),
    },
    Figure {
        key: "openbao_cpu_decrypt_provider_over_direct_64",
        label: "OpenBao CPU per Decrypt via provider / direct, 64 callers",
        target: Some((1.05, true)),
        value: |r, t| bao_cpu(r, t, "Decrypt", 64),
    },
    Figure {
        key: "throughput_decrypt_64_over_direct",
        label: "Decrypt throughput at 64 callers / direct",
        target: Some((0.85, false)),
        value: |r, t| throughput(r, t, "Decrypt", 64),
    },
    Figure {
        key: "throughput_encrypt_64_over_direct",
        label: "Encrypt throughput at 64 callers / direct",
        target: None,
        value: |r, t| throughput(r, t, "Encrypt", 64),
    },
    Figure {
        key: "idle_rss_mb",
        label: "provider idle RSS after READY=1 (MB)",
        target: Some((8.0, true)),
        value: |r, t| Some(r.startup(t)?.idle_rss_kib as f64 / 1024.0),
    },
    Figure {
        key: "peak_rss_mb",
        label: "provider peak RSS (VmHWM) after 64 callers (MB)",
        target: Some((12.0, true)),
        value: |r, t| Some(r.startup(t)?.peak_rss_kib as f64 / 1024.0),
    },
    Figure {
        key: "exec_to_ready_ms",
        label: "exec -> READY=1: JWT login, metadata, deep probe (ms)",
        target: Some((10.0, true)),
        value: |r, t| Some(r.startup(t)?.ready_ms),
    },
    Figure {
        key: "direct_startup_ms",
        label: "direct: new connection, login, key read, encrypt, decrypt (ms)",
        target: None,
        value: |r, t| Some(r.startup(t)?.direct_start_ms),
    },
    Figure {
        // What the provider adds to the start-up requests themselves: exec, config, runtime.
        key: "exec_to_ready_minus_direct_ms",
        label: "exec -> READY=1 minus the direct start-up sequence (ms)",
        target: None,
        value: |r, t| {
            let s = r.startup(t)?;
            Some(s.ready_ms - s.direct_start_ms)
        },
    },
    Figure {
        key: "status_p99_under_decrypt_load_ms",
        label: "Status p99, 1 caller while 64 callers Decrypt (ms)",
        target: Some((1.0, true)),
        value: |r, t| Some(r.get(t, "provider", "StatusUnderLoad", 1)?.p99_ms),
    },
    Figure {
        // Closed loop at saturation: p50 ~ 64 / throughput (Little's law), not a provider cost.
        key: "status_p99_64_ms",
        label: "Status p99, 64 closed-loop Status callers (ms)",
        target: None,
        value: |r, t| Some(r.get(t, "provider", "Status", 64)?.p99_ms),
    },
    Figure {
        key: "openbao_calls_per_status",
        label: "OpenBao calls per Status (probe loop included)",
        target: Some((0.001, true)),
        value: |r, t| {
            let calls: Vec<f64> = CALLERS
                .iter()
                .filter_map(|&c| r.get(t, "provider", "Status", c)?.openbao_calls)
                .collect();
            (!calls.is_empty()).then(|| calls.iter().sum::<f64>() / calls.len() as f64)
        },
    },
];

fn fmt_spread(s: Option<Spread>) -> String {
    match s {
        Some(s) => format!("{:.3} [{:.3}-{:.3}]", s.median, s.min, s.max),
        None => "n/a".into(),
    }
}

fn verdict(s: Option<Spread>, target: Option<(f64, bool)>) -> &'static str {
    match (s, target) {
        (Some(s), Some((bound, true))) if s.median <= bound => "meets",
        (Some(s), Some((bound, false))) if s.median >= bound => "meets",
        (Some(_), Some(_)) => "MISSES",
        _ => "",
    }
}

fn target_text(target: Option<(f64, bool)>) -> String {
    match target {
        Some((b, true)) => format!("<= {b}"),
        Some((b, false)) => format!(">= {b}"),
        None => "report".into(),
    }
}

/// Median (with min–max) of one numeric field of one scenario over the rounds.
fn field(
    rounds: &[Round],
    t: &str,
    path: &str,
    op: &str,
    c: usize,
    f: fn(&Measurement) -> f64,
) -> Option<Spread> {
    spread(rounds.iter().filter_map(|r| r.get(t, path, op, c).map(f)))
}

const SCENARIOS: [(&str, &str); 5] = [
    ("Status", "provider"),
    ("Decrypt", "provider"),
    ("Decrypt", "direct"),
    ("Encrypt", "provider"),
    ("Encrypt", "direct"),
];

/// Every (op, path, callers) row of the table, in print order.
fn rows() -> Vec<(&'static str, &'static str, usize)> {
    let mut rows: Vec<_> = CALLERS
        .iter()
        .flat_map(|&c| SCENARIOS.iter().map(move |&(op, path)| (op, path, c)))
        .collect();
    rows.push(("StatusUnderLoad", "provider", 1));
    rows
}

/// The table printed at the end of `make bench` (medians over rounds).
pub fn print(rounds: &[Round]) {
    for t in TRANSPORTS {
        println!();
        println!(
            "{t}: medians of {} rounds (CPU in µs per call; bao = OpenBao; calls/s = throughput)",
            rounds.len()
        );
        println!(
            "{:<15} {:<9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
            "op",
            "path",
            "callers",
            "p50 ms",
            "p99 ms",
            "calls/s",
            "prov cpu",
            "bao cpu",
            "bench cpu",
            "bao/call",
            "errors"
        );
        for (op, path, c) in rows() {
            if rounds.iter().all(|r| r.get(t, path, op, c).is_none()) {
                continue;
            }
            let m = |f: fn(&Measurement) -> f64| {
                field(rounds, t, path, op, c, f).map_or(f64::NAN, |s| s.median)
            };
            let errors: u64 = rounds
                .iter()
                .filter_map(|r| r.get(t, path, op, c))
                .map(|m| m.errors)
                .sum();
            let calls = field(rounds, t, path, op, c, |m| {
                m.openbao_calls.unwrap_or(f64::NAN)
            })
            .map_or("-".to_owned(), |s| format!("{:.3}", s.median));
            println!(
                "{op:<15} {path:<9} {c:>7} {:>9.3} {:>9.3} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {calls:>8} {errors:>7}",
                m(|m| m.p50_ms),
                m(|m| m.p99_ms),
                m(|m| m.throughput),
                m(|m| m.provider_cpu_us),
                m(|m| m.openbao_cpu_us),
                m(|m| m.client_cpu_us),
            );
        }
    }
    println!();
    println!(
        "targets (median [min-max] over {} rounds; targets apply to https)",
        rounds.len()
    );
    println!(
        "{:<58} {:>24} {:>24} {:>8} {:>7}",
        "figure", "https", "http", "target", "https"
    );
    for f in FIGURES {
        let https = spread(rounds.iter().filter_map(|r| (f.value)(r, "https")));
        let http = spread(rounds.iter().filter_map(|r| (f.value)(r, "http")));
        println!(
            "{:<58} {:>24} {:>24} {:>8} {:>7}",
            f.label,
            fmt_spread(https),
            fmt_spread(http),
            target_text(f.target),
            verdict(https, f.target)
        );
    }
    for r in rounds.iter().enumerate() {
        for m in &r.1.measurements {
            if let Some(e) = &m.first_error {
                println!(
                    "round {}: {} {} {} x{}: {} errors, first: {e}",
                    r.0 + 1,
                    m.transport,
                    m.path,
                    m.op,
                    m.callers,
                    m.errors
                );
            }
        }
    }
}

/// target/bench/results.json: medians per path ("provider", and the baseline under "direct"),
/// the figures, and every round's raw measurements.
pub fn to_json(rounds: &[Round], header: Value) -> Value {
    let mut out = match header {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for path in ["provider", "direct"] {
        let mut by_transport = Map::new();
        for t in TRANSPORTS {
            let mut ops = Map::new();
            for (op, p, c) in rows().into_iter().filter(|(_, p, _)| *p == path) {
                let mut by_callers = match ops.remove(op) {
                    Some(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                let s = |f: fn(&Measurement) -> f64| {
                    field(rounds, t, p, op, c, f).map_or(Value::Null, Spread::to_json)
                };
                by_callers.insert(
                    c.to_string(),
                    json!({
                        "p50_ms": s(|m| m.p50_ms),
                        "p99_ms": s(|m| m.p99_ms),
                        "throughput_per_s": s(|m| m.throughput),
                        "provider_cpu_us_per_call": s(|m| m.provider_cpu_us),
                        "openbao_cpu_us_per_call": s(|m| m.openbao_cpu_us),
                        "client_cpu_us_per_call": s(|m| m.client_cpu_us),
                        "openbao_calls_per_call": s(|m| m.openbao_calls.unwrap_or(f64::NAN)),
                        "errors": rounds.iter().filter_map(|r| r.get(t, p, op, c)).map(|m| m.errors).sum::<u64>(),
                    }),
                );
                ops.insert(op.to_owned(), Value::Object(by_callers));
            }
            by_transport.insert(t.to_owned(), Value::Object(ops));
        }
        out.insert(path.to_owned(), Value::Object(by_transport));
    }
    let mut figures = Map::new();
    for f in FIGURES {
        let mut per = Map::new();
        for t in TRANSPORTS {
            let s = spread(rounds.iter().filter_map(|r| (f.value)(r, t)));
            per.insert(t.to_owned(), s.map_or(Value::Null, Spread::to_json));
        }
        per.insert("label".into(), json!(f.label));
        per.insert(
            "target".into(),
            json!(f.target.map(|(b, at_most)| if at_most {
                format!("<= {b}")
            } else {
                format!(">= {b}")
            })),
        );
        per.insert(
            "https_verdict".into(),
            json!(verdict(
                spread(rounds.iter().filter_map(|r| (f.value)(r, "https"))),
                f.target
            )),
        );
        figures.insert(f.key.to_owned(), Value::Object(per));
    }
    out.insert("figures".into(), Value::Object(figures));
    let raw: Vec<Value> = rounds
        .iter()
        .map(|r| {
            let mut ms = Map::new();
            for m in &r.measurements {
                ms.insert(
                    format!("{}/{}/{}/{}", m.transport, m.path, m.op, m.callers),
                    m.to_json(),
                );
            }
            let starts: Vec<Value> = r
                .startups
                .iter()
                .map(|s| {
                    json!({
                        "transport": s.transport,
                        "exec_to_ready_ms": s.ready_ms,
                        "direct_startup_ms": s.direct_start_ms,
                        "idle_rss_kib": s.idle_rss_kib,
                        "peak_rss_kib": s.peak_rss_kib,
                        "end_rss_kib": s.end_rss_kib,
                    })
                })
                .collect();
            json!({
                "loadavg_start": r.loadavg_start,
                "loadavg_end": r.loadavg_end,
                "startups": starts,
                "measurements": ms,
            })
        })
        .collect();
    out.insert("rounds".into(), Value::Array(raw));
    Value::Object(out)
}
