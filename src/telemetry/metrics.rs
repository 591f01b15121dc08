//! Prometheus metrics. One global registry so every module can count without plumbing; labels
//! are bounded (methods, codes, operations, a short key_id hash), never uids or key names.
use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

// Label values on the per-call paths are `&'static str` (or a `Cow` that is borrowed for every
// common HTTP status), so counting a call allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationStatus {
    operation: &'static str,
    status: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Hash {
    hash: String,
}

/// Labelled as kube-apiserver labels its `apiserver_envelope_encryption_key_id_hash_*` series,
/// so one PromQL join compares a host's provider with its API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyIdInfo {
    provider_name: String,
    key_id_hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabel {
    credential: &'static str,
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
    key_id_info: Family<KeyIdInfo, Gauge>,
    key_version: Gauge,
    snapshot_age: Gauge<f64, AtomicU64>,
    token_ttl: Gauge,
    credential_expiry: Family<CredentialLabel, Gauge>,
    logins: Family<MethodResult, Counter>,
    healthy: Gauge,
    registry_unsaved: Gauge,
    warnings: Gauge,
    http_shed: Counter,
    http_accept_errors: Counter,
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
            key_id_info: Family::default(),
            key_version: Gauge::default(),
            snapshot_age: Gauge::default(),
            token_ttl: Gauge::default(),
            credential_expiry: Family::default(),
            logins: Family::default(),
            healthy: Gauge::default(),
            registry_unsaved: Gauge::default(),
            warnings: Gauge::default(),
            http_shed: Counter::default(),
            http_accept_errors: Counter::default(),
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
            "key_id_info",
            "1 for the key_id Status reports, hashed as kube-apiserver does (sha256:<hex>) and with the EncryptionConfiguration provider name",
            m.key_id_info.clone(),
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
            "credential_expiry_timestamp_seconds",
            "When the login credential ends (Unix time): the JWT exp claim or the client certificate's notAfter",
            m.credential_expiry.clone(),
        );
        registry.register(
            "key_warnings",
            "Key conditions that do not stop serving but need an operator (e.g. min_decryption_version > 1); details in the log and `doctor`",
            m.warnings.clone(),
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
        registry.register(
            "registry_unsaved",
            "1 while the key registry cannot be saved or locked (state directory full or read-only): Encrypt keeps the saved active key, promotions wait",
            m.registry_unsaved.clone(),
        );
        registry.register(
            "http_connections_shed",
            "Connections to /metrics, /livez or /readyz closed at once because the listener had telemetry.max_connections open",
            m.http_shed.clone(),
        );
        registry.register(
            "http_accept_errors",
            "Accept errors on the telemetry listeners other than a single failed connection (e.g. out of file descriptors)",
            m.http_accept_errors.clone(),
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

pub(crate) fn grpc_request(method: &'static str, code: &'static str, took: Duration) {
    let m = metrics();
    m.grpc_requests
        .get_or_create(&MethodCode { method, code })
        .inc();
    m.grpc_duration
        .get_or_create(&Method { method })
        .observe(took.as_secs_f64());
}

/// `status` is an HTTP status or an error class; `status_label` gives it without allocating.
pub(crate) fn openbao_request(operation: &'static str, status: Cow<'static, str>, took: Duration) {
    let m = metrics();
    m.openbao_requests
        .get_or_create(&OperationStatus { operation, status })
        .inc();
    m.openbao_duration
        .get_or_create(&Operation { operation })
        .observe(took.as_secs_f64());
}

/// A request the client did not send, by why (`retry_budget_exhausted`,
/// `deadline_too_short`, `overloaded`): counted with the requests, no duration observed.
pub(crate) fn openbao_request_not_sent(operation: &'static str, status: &'static str) {
    metrics()
        .openbao_requests
        .get_or_create(&OperationStatus {
            operation,
            status: Cow::Borrowed(status),
        })
        .inc();
}

/// An HTTP status as a label value: borrowed for the statuses OpenBao answers with.
pub(crate) fn status_label(code: u16) -> Cow<'static, str> {
    Cow::Borrowed(match code {
        200 => "200",
        204 => "204",
        307 => "307",
        400 => "400",
        403 => "403",
        404 => "404",
        412 => "412",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        _ => return Cow::Owned(code.to_string()),
    })
}

/// The key_id Status reports, in both forms: the short hash (`status_key_id_hash`, kept for
/// existing dashboards) and kube-apiserver's `sha256:<64 hex>` (`key_id_info`). Only the current
/// key_id has a series.
pub(crate) fn active_key_id(short_hash: &str, apiserver_hash: &str, provider_name: &str) {
    let m = metrics();
    let current = Hash {
        hash: short_hash.into(),
    };
    if m.key_id_hash.get(&current).is_none_or(|g| g.get() != 1) {
        m.key_id_hash.clear();
        m.key_id_hash.get_or_create(&current).set(1);
    }
    let info = KeyIdInfo {
        provider_name: provider_name.into(),
        key_id_hash: apiserver_hash.into(),
    };
    if m.key_id_info.get(&info).is_none_or(|g| g.get() != 1) {
        m.key_id_info.clear();
        m.key_id_info.get_or_create(&info).set(1);
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

/// The login credential's end as (`jwt` or `client_certificate`, Unix seconds); `None` (token
/// auth, or a credential that cannot be read) removes the series.
pub(crate) fn credential_expiry(expiry: Option<(&'static str, i64)>) {
    let family = &metrics().credential_expiry;
    family.clear();
    if let Some((credential, at)) = expiry {
        family
            .get_or_create(&CredentialLabel { credential })
            .set(at);
    }
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

pub(crate) fn registry_unsaved(unsaved: bool) {
    metrics().registry_unsaved.set(i64::from(unsaved));
}

pub(crate) fn warnings(count: usize) {
    metrics().warnings.set(count as i64);
}

pub(crate) fn http_connection_shed() {
    metrics().http_shed.inc();
}

pub(crate) fn http_accept_error() {
    metrics().http_accept_errors.inc();
}

/// The Prometheus text exposition of every metric.
pub(crate) fn render() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics().registry).is_err() {
        out.clear();
    }
    out
}
