//! `doctor --kube`: this host's kube-apiserver, read with the admin kubeconfig. Does it pass its
//! KMS readiness check, does it poll this provider (by the provider name in its envelope
//! metrics, which exist only for KMS providers its EncryptionConfiguration names), and is it on
//! the key_id the provider serves now (kube-apiserver labels key_ids `sha256:<hex>`)?
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{Level, Report};
use crate::config::Settings;
use crate::keys::apiserver_hash;
use crate::kms::client;
use crate::pb;

/// The checks `--kube` adds, after all others.
pub(crate) const KUBE_CHECKS: &[&str] = &["kube-readyz", "kube-provider", "kube-key-id"];

const STATUS_METRIC: &str =
    "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds";
const WRITES_METRIC: &str = "apiserver_envelope_encryption_key_id_hash_total";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: String,
    #[serde(default)]
    contexts: Vec<Named<ContextRef>>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    item: T,
}

#[derive(Deserialize)]
struct ContextRef {
    cluster: String,
    user: String,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority-data", default)]
    ca_data: Option<String>,
    #[serde(rename = "certificate-authority", default)]
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct User {
    #[serde(rename = "client-certificate-data", default)]
    cert_data: Option<String>,
    #[serde(rename = "client-key-data", default)]
    key_data: Option<Zeroizing<String>>,
    #[serde(rename = "client-certificate", default)]
    cert_file: Option<PathBuf>,
    #[serde(rename = "client-key", default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    token: Option<Zeroizing<String>>,
}

/// An HTTP client for the kube-apiserver of `kubeconfig`'s current context (or `server`).
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<Zeroizing<String>>,
}

fn pem(data: Option<&str>, file: Option<&Path>, what: &str) -> Result<Option<Vec<u8>>, String> {
    match (data, file) {
        (Some(d), _) => STANDARD
            .decode(d.trim())
            .map(Some)
            .map_err(|e| format!("{what}-data is not base64: {e}")),
        (None, Some(f)) => std::fs::read(f)
            .map(Some)
            .map_err(|e| format!("{what} {}: {e}", f.display())),
        (None, None) => Ok(None),
    }
}

impl Api {
    fn new(kubeconfig: &Path, server: Option<&str>) -> Result<Self, String> {
        let shown = kubeconfig.display();
        let text = Zeroizing::new(
            std::fs::read_to_string(kubeconfig).map_err(|e| format!("kubeconfig {shown}: {e}"))?,
        );
        let k: Kubeconfig = serde_yaml_ng::from_str(&text)
            .map_err(|e| format!("kubeconfig {shown} is not a kubeconfig: {e}"))?;
        let ctx = k
            .contexts
            .iter()
            .find(|c| c.name == k.current_context)
            .ok_or_else(|| format!("kubeconfig {shown}: no context {:?}", k.current_context))?;
        let cluster = k
            .clusters
            .iter()
            .find(|c| c.name == ctx.item.cluster)
            .ok_or_else(|| format!("kubeconfig {shown}: no cluster {:?}", ctx.item.cluster))?;
        let user = k
            .users
            .iter()
            .find(|u| u.name == ctx.item.user)
            .ok_or_else(|| format!("kubeconfig {shown}: no user {:?}", ctx.item.user))?;
        let (c, u) = (&cluster.item, &user.item);
        crate::support::crypto_provider();
        let mut b = reqwest::Client::builder().timeout(TIMEOUT);
        if let Some(ca) = pem(
            c.ca_data.as_deref(),
            c.ca_file.as_deref(),
            "certificate-authority",
        )? {
            let cert = reqwest::Certificate::from_pem(&ca)
                .map_err(|e| format!("kubeconfig {shown}: certificate-authority: {e}"))?;
            b = b.tls_built_in_root_certs(false).add_root_certificate(cert);
        }
        let key = pem(
            u.key_data.as_deref().map(String::as_str),
            u.key_file.as_deref(),
            "client-key",
        )?
        .map(Zeroizing::new);
        let cert = pem(
            u.cert_data.as_deref(),
            u.cert_file.as_deref(),
            "client-certificate",
        )?;
        if let (Some(key), Some(cert)) = (key, cert) {
            let id = crate::support::pem_identity(&key, &cert)
                .map_err(|e| format!("kubeconfig {shown}: client certificate and key: {e}"))?;
            b = b.identity(id);
        }
        Ok(Self {
            http: b.build().map_err(|e| format!("TLS setup: {e}"))?,
            base: server.unwrap_or(&c.server).trim_end_matches('/').to_owned(),
            token: u.token.clone(),
        })
    }

    async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.as_str());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", crate::support::error_chain(&e)))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| format!("GET {url}: {e}"))?;
        Ok((status, body))
    }
}

/// Samples of `name` in Prometheus text: labels and value.
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some((parse_labels(labels), value))
        })
        .collect()
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    out
}

/// The key_id the provider on this host serves now (Status over its socket).
async fn provider_key_id(s: &Settings) -> Result<String, String> {
    let socket = &s.server.socket_path;
    let mut c = tokio::time::timeout(TIMEOUT, client::connect(socket))
        .await
        .map_err(|_| format!("connecting to {} timed out", socket.display()))?
        .map_err(|e| {
            format!(
                "cannot connect to the provider at {}: {e}",
                socket.display()
            )
        })?;
    client::call("Status", TIMEOUT, c.status(pb::StatusRequest {}))
        .await
        .map(|r| r.key_id)
        .map_err(|e| format!("provider {e}"))
}

pub(crate) async fn run(s: &Settings, kubeconfig: &Path, server: Option<&str>, r: &mut Report) {
    let skip_all = |r: &mut Report, from: usize, why: &str| {
        for check in &KUBE_CHECKS[from..] {
            r.line(Level::Skip, check, why);
        }
    };
    let api = match Api::new(kubeconfig, server) {
        Ok(a) => a,
        Err(e) => {
            r.fail("kube-readyz", e);
            return skip_all(r, 1, "not run because kube-readyz failed");
        }
    };
    // Also makes kube-apiserver call Status now, so the metrics below are fresh.
    match api.get("/readyz/kms-providers").await {
        Ok((200, _)) => r.ok(
            "kube-readyz",
            format!("{}/readyz/kms-providers ok", api.base),
        ),
        Ok((code, body)) => r.fail(
            "kube-readyz",
            format!("{}/readyz/kms-providers answered {code}: {body}", api.base),
        ),
        Err(e) => {
            r.fail("kube-readyz", e);
            return skip_all(r, 1, "not run because kube-readyz failed");
        }
    }
    let metrics = match api.get("/metrics").await {
        Ok((200, body)) => body,
        Ok((code, body)) => {
            let first = body.lines().next().unwrap_or_default().to_owned();
            r.fail(
                "kube-provider",
                format!("GET /metrics answered {code}: {first}"),
            );
            return skip_all(r, 2, "not run because kube-provider failed");
        }
        Err(e) => {
            r.fail("kube-provider", e);
            return skip_all(r, 2, "not run because kube-provider failed");
        }
    };
    let name = &s.transit.key_id_scope.provider_name;
    let ours = |l: &BTreeMap<String, String>| l.get("provider_name") == Some(name);
    let Some((latest, _)) = samples(&metrics, STATUS_METRIC)
        .into_iter()
        .filter(|(l, _)| ours(l))
        .max_by(|a, b| a.1.total_cmp(&b.1))
    else {
        r.fail(
            "kube-provider",
            format!("kube-apiserver reports no Status from a KMS provider named {name:?}: its EncryptionConfiguration does not name this provider, or names it differently"),
        );
        return skip_all(r, 2, "not run because kube-provider failed");
    };
    r.ok(
        "kube-provider",
        format!("kube-apiserver polls provider {name:?}"),
    );
    let seen = latest.get("key_id_hash").cloned().unwrap_or_default();
    let current = match provider_key_id(s).await {
        Ok(k) => apiserver_hash(&k),
        Err(e) => return r.fail("kube-key-id", e),
    };
    let writes: f64 = samples(&metrics, WRITES_METRIC)
        .iter()
        .filter(|(l, _)| {
            ours(l)
                && l.get("transformation_type").map(String::as_str) == Some("to_storage")
                && l.get("key_id_hash") == Some(&current)
        })
        .map(|(_, v)| v)
        .sum();
    if seen == current {
        r.ok(
            "kube-key-id",
            format!("kube-apiserver's latest Status has the provider's key_id ({current}); {writes} writes with it since kube-apiserver started"),
        );
    } else {
        r.warn(
            "kube-key-id",
            format!("kube-apiserver's latest Status had key_id {seen}, the provider now serves {current}: kube-apiserver writes with the older one until its next Status (about a minute)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_read_labels_with_escapes_and_skip_other_metrics() {
        let text = "# HELP x\n\
            apiserver_envelope_encryption_key_id_hash_total{apiserver_id_hash=\"sha256:a\",key_id_hash=\"sha256:b\",provider_name=\"p\\\"q\",transformation_type=\"to_storage\"} 3\n\
            apiserver_envelope_encryption_key_id_hash_total_other{provider_name=\"p\"} 1\n";
        let s = samples(text, WRITES_METRIC);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].1, 3.0);
        assert_eq!(s[0].0["provider_name"], "p\"q");
        assert_eq!(s[0].0["transformation_type"], "to_storage");
        assert_eq!(s[0].0["key_id_hash"], "sha256:b");
    }
}
