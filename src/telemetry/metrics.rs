//! Prometheus metrics. One global registry so every module can count without plumbing; labels
//! are bounded (methods, codes, operations, a short key_id hash), never uids or key names.
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationStatus {
    operation: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Hash {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodResult {
    method: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: String,
}

struct Metrics {
    registry: Registry,
    grpc_requests: Family<MethodCode, Counter>,
    grpc_duration: Family<Method, Histogram>,
    openbao_requests: Family<OperationStatus, Counter>,
    openbao_duration: Family<Operation, Histogram>,
    key_id_hash: Family<Hash, Gauge>,
    key_version: Gauge,
    snapshot_age: Gauge<f64, AtomicU64>,
    token_ttl: Gauge,
    logins: Family<MethodResult, Counter>,
    healthy: Gauge,
}

fn buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ]
    .into_iter()
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("openbao_kms");
        let m = Metrics {
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(|| Histogram::new(buckets())),
            openbao_requests: Family::default(),
            openbao_duration: Family::new_with_constructor(|| Histogram::new(buckets())),
            key_id_hash: Family::default(),
            key_version: Gauge::default(),
            snapshot_age: Gauge::default(),
            token_ttl: Gauge::default(),
            logins: Family::default(),
            healthy: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "grpc_requests",
            "KMS gRPC calls by method and status code",
            m.grpc_requests.clone(),
        );
        registry.register(
            "grpc_duration_seconds",
            "KMS gRPC call latency",
            m.grpc_duration.clone(),
        );
        registry.register(
            "openbao_requests",
            "OpenBao HTTP requests by operation and HTTP status or error class",
            m.openbao_requests.clone(),
        );
        registry.register(
            "openbao_duration_seconds",
            "OpenBao request latency",
            m.openbao_duration.clone(),
        );
        registry.register(
            "status_key_id_hash",
            "1 for the short hash of the key_id Status reports (compare across hosts)",
            m.key_id_hash.clone(),
        );
        registry.register(
            "key_version",
            "Transit key version used for Encrypt",
            m.key_version.clone(),
        );
        registry.register(
            "status_snapshot_age_seconds",
            "Age of the key metadata snapshot Status is served from",
            m.snapshot_age.clone(),
        );
        registry.register(
            "token_ttl_seconds",
            "Remaining TTL of the OpenBao token, updated every probe; -1 when it never expires",
            m.token_ttl.clone(),
        );
        registry.register(
            "auth_logins",
            "OpenBao logins by method and result",
            m.logins.clone(),
        );
        registry.register(
            "healthy",
            "1 when Status reports healthz ok",
            m.healthy.clone(),
        );
        let build = Family::<Version, Gauge>::default();
        build
            .get_or_create(&Version {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        Metrics { registry, ..m }
    })
}

pub(crate) fn grpc_request(method: &str, code: &str, took: Duration) {
    let m = metrics();
    m.grpc_requests
        .get_or_create(&MethodCode {
            method: method.into(),
            code: code.into(),
        })
        .inc();
    m.grpc_duration
        .get_or_create(&Method {
            method: method.into(),
        })
        .observe(took.as_secs_f64());
}

pub(crate) fn openbao_request(operation: &str, status: &str, took: Duration) {
    let m = metrics();
    m.openbao_requests
        .get_or_create(&OperationStatus {
            operation: operation.into(),
            status: status.into(),
        })
        .inc();
    m.openbao_duration
        .get_or_create(&Operation {
            operation: operation.into(),
        })
        .observe(took.as_secs_f64());
}

pub(crate) fn active_key_id(short_hash: &str) {
    let m = metrics();
    let current = Hash {
        hash: short_hash.into(),
    };
    if m.key_id_hash.get(&current).is_none_or(|g| g.get() != 1) {
        m.key_id_hash.clear();
        m.key_id_hash.get_or_create(&current).set(1);
    }
}

pub(crate) fn key_version(version: u32) {
    metrics().key_version.set(i64::from(version));
}

pub(crate) fn snapshot_age(age: Option<Duration>) {
    metrics()
        .snapshot_age
        .set(age.map_or(-1.0, |a| a.as_secs_f64()));
}

pub(crate) fn token_ttl(ttl: Duration) {
    metrics().token_ttl.set(ttl.as_secs() as i64);
}

/// A token without a TTL (a static token): -1, so "TTL low" alerts do not fire on it.
pub(crate) fn token_never_expires() {
    metrics().token_ttl.set(-1);
}

pub(crate) fn auth_login(method: &str, result: &str) {
    metrics()
        .logins
        .get_or_create(&MethodResult {
            method: method.into(),
            result: result.into(),
        })
        .inc();
}

pub(crate) fn healthy(ok: bool) {
    metrics().healthy.set(i64::from(ok));
}

/// The Prometheus text exposition of every metric.
pub(crate) fn render() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics().registry).is_err() {
        out.clear();
    }
    out
}
