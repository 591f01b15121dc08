//! Operability against a real OpenBao: /metrics moves with real traffic and names the key_id
//! Status reports, /readyz follows OpenBao while /livez stays up, `doctor` passes on the lab's
//! least-privilege setup and names each misconfiguration, and the docs' dashboard and alert
//! rules only use metric names a real scrape exposes.
pub mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bao_kms_provider::keys::short_hash;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::faults::FaultProxy;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// One scrape: series (name plus sorted labels) to value, and the family names from `# TYPE`.
struct Scrape {
    content_type: String,
    body: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    families: BTreeSet<String>,
}

impl Scrape {
    async fn take(port: u16) -> Scrape {
        let resp = http()
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("scrape /metrics");
        assert_eq!(resp.status().as_u16(), 200);
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.text().await.expect("body");
        let mut samples = Vec::new();
        let mut families = BTreeSet::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.insert(rest.split(' ').next().unwrap_or_default().to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label k=v");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            samples.push((
                name.to_owned(),
                labels,
                value.parse().expect("numeric value"),
            ));
        }
        Scrape {
            content_type,
            body,
            samples,
            families,
        }
    }

    /// The value of the one sample with this name and (at least) these labels; 0 when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let hits: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            hits.len() <= 1,
            "{name} {labels:?} matches {} series",
            hits.len()
        );
        hits.first().copied().unwrap_or(0.0)
    }

    fn names(&self) -> BTreeSet<String> {
        self.samples.iter().map(|(n, _, _)| n.clone()).collect()
    }
}

/// Starts a provider and makes one kube-apiserver style round trip, so every series exists.
async fn provider_after_round_trip(bao: &Bao) -> Provider {
    let p = Provider::start(&ProviderOptions::new(bao)).await;
    let mut c = p.client().await;
    let e = encrypt(&mut c, &[5u8; 32]).await;
    c.decrypt(decrypt_request(&e)).await.expect("Decrypt");
    p
}

#[tokio::test]
async fn metrics_count_a_round_trip_and_expose_the_status_key_id_hash() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let before = Scrape::take(p.metrics_port).await;
    let mut c = p.client().await;
    let e = encrypt(&mut c, &[5u8; 32]).await;
    c.decrypt(decrypt_request(&e)).await.expect("Decrypt");
    let status = p.status().await;
    let after = Scrape::take(p.metrics_port).await;

    assert!(
        after
            .content_type
            .starts_with("application/openmetrics-text"),
        "content type {}",
        after.content_type
    );
    assert!(
        after.body.ends_with("# EOF\n"),
        "OpenMetrics exposition ends with # EOF"
    );
    for (method, label) in [("Encrypt", "Encrypt"), ("Decrypt", "Decrypt")] {
        let grpc = [("method", label), ("code", "OK")];
        assert_eq!(
            after.value("openbao_kms_grpc_requests_total", &grpc)
                - before.value("openbao_kms_grpc_requests_total", &grpc),
            1.0,
            "one {method} call counted"
        );
        assert!(
            after.value(
                "openbao_kms_grpc_duration_seconds_count",
                &[("method", label)]
            ) >= 1.0
        );
    }
    for op in ["encrypt", "decrypt"] {
        let labels = [("operation", op), ("status", "200")];
        assert!(
            after.value("openbao_kms_openbao_requests_total", &labels)
                > before.value("openbao_kms_openbao_requests_total", &labels),
            "OpenBao {op} counted"
        );
        assert!(
            after.value(
                "openbao_kms_openbao_duration_seconds_count",
                &[("operation", op)]
            ) >= 1.0
        );
    }
    assert!(
        after.value(
            "openbao_kms_auth_logins_total",
            &[("method", "jwt"), ("result", "success")]
        ) >= 1.0
    );
    assert_eq!(
        after.value(
            "openbao_kms_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(after.value("openbao_kms_healthy", &[]), 1.0);
    assert_eq!(after.value("openbao_kms_key_version", &[]), 1.0);
    let ttl = after.value("openbao_kms_token_ttl_seconds", &[]);
    assert!(
        ttl > 3000.0 && ttl <= 3600.0,
        "token TTL from the lab role (1h): {ttl}"
    );
    let age = after.value("openbao_kms_status_snapshot_age_seconds", &[]);
    assert!(
        (0.0..3.0).contains(&age),
        "snapshot age below max_staleness: {age}"
    );

    let hash = short_hash(&status.key_id);
    assert_eq!(
        after.value("openbao_kms_status_key_id_hash", &[("hash", &hash)]),
        1.0
    );
    let hashes: Vec<_> = after
        .samples
        .iter()
        .filter(|(n, _, _)| n == "openbao_kms_status_key_id_hash")
        .collect();
    assert_eq!(
        hashes.len(),
        1,
        "exactly one key_id hash series: {hashes:?}"
    );

    // kube-apiserver's form, computed here as its envelope metrics do: "sha256:" + hex.
    let digest = Sha256::digest(status.key_id.as_bytes());
    let apiserver_hash: String = std::iter::once("sha256:".to_owned())
        .chain(digest.iter().map(|b| format!("{b:02x}")))
        .collect();
    assert_eq!(apiserver_hash.len(), 7 + 64);
    assert_eq!(
        after.value(
            "openbao_kms_key_id_info",
            &[
                ("key_id_hash", &apiserver_hash),
                ("provider_name", "openbao-kms")
            ]
        ),
        1.0,
        "key_id_info carries kube-apiserver's hash:\n{}",
        after.body
    );
    let infos = after
        .samples
        .iter()
        .filter(|(n, _, _)| n == "openbao_kms_key_id_info")
        .count();
    assert_eq!(infos, 1, "exactly one key_id_info series");

    // Bounded labels: no uid, key name or key_id ever becomes a label value.
    for (name, labels, _) in &after.samples {
        for v in labels.values() {
            assert!(
                !v.contains("test-uid") && !v.contains("k8s-etcd") && !v.starts_with("obkms1-"),
                "{name} carries an unbounded label value {v}"
            );
        }
    }
}

#[tokio::test]
async fn readyz_follows_openbao_while_livez_stays_up() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let mut o = ProviderOptions::new(&bao);
    o.address = proxy.addr();
    let p = Provider::start(&o).await;
    let pr = &p;
    let readyz = move || async move { pr.http_get(pr.health_port, "/readyz").await };

    let (code, body) = readyz().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({ "ready": true, "reasons": [] })
    );

    proxy.set_down();
    wait_for(
        "/readyz to answer 503",
        Duration::from_secs(15),
        || async move { readyz().await.0 == 503 },
    )
    .await;
    let (_, body) = readyz().await;
    let v: Value = serde_json::from_str(&body).expect("/readyz is JSON when not ready");
    assert_eq!(v["ready"], json!(false));
    let reasons = v["reasons"].as_array().expect("reasons");
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("OpenBao"))),
        "a reason names OpenBao: {body}"
    );
    let (live, text) = p.http_get(p.health_port, "/livez").await;
    assert_eq!(live, 200, "/livez stays up while OpenBao is down: {text}");
    let m = Scrape::take(p.metrics_port).await;
    assert_eq!(m.value("openbao_kms_healthy", &[]), 0.0);
    let unreachable: f64 = m
        .samples
        .iter()
        .filter(|(n, l, _)| {
            n == "openbao_kms_openbao_requests_total"
                && l.get("status").map(String::as_str) == Some("unreachable")
        })
        .map(|(_, _, v)| v)
        .sum();
    assert!(
        unreachable >= 1.0,
        "failed OpenBao requests are counted by error class"
    );

    proxy.set_up();
    wait_for(
        "/readyz to answer 200 again",
        Duration::from_secs(15),
        || async move { readyz().await.0 == 200 },
    )
    .await;
    assert_eq!(p.http_get(p.health_port, "/livez").await.0, 200);
    assert_eq!(
        Scrape::take(p.metrics_port)
            .await
            .value("openbao_kms_healthy", &[]),
        1.0
    );
}

/// Writes a provider config for `o` into `dir` without starting a provider.
fn write_config(dir: &Path, o: &ProviderOptions, edit: impl Fn(String) -> String) -> PathBuf {
    let text = Provider::config_text(
        o,
        &dir.join("kms.sock"),
        &dir.join("state"),
        free_port(),
        free_port(),
    );
    let path = dir.join(format!("config-{}.toml", rand_suffix()));
    std::fs::write(&path, edit(text)).expect("write config");
    path
}

fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Runs the real `doctor`; returns the exit code and its lines.
fn doctor(config: &Path) -> (i32, Vec<String>) {
    doctor_with(config, &[])
}

/// `doctor` with more arguments, e.g. `--other-config FILE`.
fn doctor_with(config: &Path, args: &[&Path]) -> (i32, Vec<String>) {
    let mut cmd = Command::new(provider_bin());
    cmd.args(["doctor", "--config"]).arg(config);
    for a in args {
        cmd.arg("--other-config").arg(a);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run doctor");
    let text = String::from_utf8(out.stdout).expect("utf8");
    (
        out.status.code().unwrap_or(-1),
        text.lines().map(str::to_owned).collect(),
    )
}

fn line<'a>(lines: &'a [String], check: &str) -> &'a str {
    lines
        .iter()
        .find(|l| {
            l.get(5..)
                .is_some_and(|rest| rest.starts_with(&format!("{check}:")))
        })
        .unwrap_or_else(|| panic!("no {check} line in:\n{}", lines.join("\n")))
}

#[tokio::test]
async fn doctor_passes_least_privilege_and_names_a_wider_policy_and_an_exportable_key() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let o = ProviderOptions::new(&bao);
    let config = write_config(dir.path(), &o, |t| t);

    let (code, lines) = doctor(&config);
    let all = lines.join("\n");
    assert_eq!(code, 0, "doctor passes on the lab setup:\n{all}");
    let checks = [
        "config",
        "credential-expiry",
        "tls",
        "openbao-health",
        "login",
        "token",
        "key-profile",
        "upsert",
        "mount",
        "round-trip",
        "least-privilege",
        "capabilities",
    ];
    for (l, check) in lines.iter().zip(checks) {
        // The lab's JWT lives one hour: within the default auth.expiry_warning (24h).
        let level = if check == "credential-expiry" {
            "warn"
        } else {
            "ok  "
        };
        assert!(
            l.starts_with(&format!("{level} {check}: ")),
            "check {check} in order and {level}:\n{all}"
        );
    }
    let ce = line(&lines, "credential-expiry");
    assert!(
        ce.contains("JWT") && ce.contains("within auth.expiry_warning (1day)"),
        "{all}"
    );
    assert!(
        line(&lines, "tls").contains("plain HTTP on the loopback"),
        "{all}"
    );
    assert!(line(&lines, "token").contains("renewable"), "{all}");
    assert!(line(&lines, "token").contains("expires in"), "{all}");
    assert!(
        lines.last().is_some_and(|l| l.starts_with("result: OK")),
        "{all}"
    );

    // The lab policy plus rotate: least privilege fails and names the path.
    let policy = policy_text("transit", "k8s-etcd");
    let wider = format!(
        "{policy}path \"transit/keys/k8s-etcd/rotate\" {{\n  capabilities = [\"update\"]\n}}\n"
    );
    bao.root(
        Method::PUT,
        "sys/policy/bao-kms-provider",
        Some(json!({ "policy": wider })),
    )
    .await;
    let (code, lines) = doctor(&config);
    let all = lines.join("\n");
    assert_eq!(
        code, 1,
        "doctor fails with a policy that can rotate:\n{all}"
    );
    let lp = line(&lines, "least-privilege");
    assert!(
        lp.starts_with("FAIL") && lp.contains("rotate: transit/keys/k8s-etcd/rotate [update]"),
        "{all}"
    );
    assert!(line(&lines, "capabilities").starts_with("ok"), "{all}");

    // An exportable key with deletion allowed, reachable by an otherwise least-privilege policy.
    bao.root(
        Method::POST,
        "transit/keys/exportable-key",
        Some(json!({ "type": "aes256-gcm96", "exportable": true })),
    )
    .await;
    bao.root(
        Method::POST,
        "transit/keys/exportable-key/config",
        Some(json!({ "deletion_allowed": true })),
    )
    .await;
    let both = format!("{policy}{}", policy_text("transit", "exportable-key"));
    bao.root(
        Method::PUT,
        "sys/policy/bao-kms-provider",
        Some(json!({ "policy": both })),
    )
    .await;
    let exportable = write_config(dir.path(), &o, |t| {
        t.replace(
            "[transit.key_id_scope]",
            "[transit]\nkey_name = \"exportable-key\"\n[transit.key_id_scope]",
        )
    });
    let (code, lines) = doctor(&exportable);
    let all = lines.join("\n");
    assert_eq!(code, 1, "doctor fails for an exportable key:\n{all}");
    let kp = line(&lines, "key-profile");
    assert!(
        kp.starts_with("FAIL") && kp.contains("exportable=true"),
        "{all}"
    );
    assert!(
        kp.contains("deletion_allowed=true") && kp.contains("transit/keys/exportable-key/config"),
        "{all}"
    );
    assert!(line(&lines, "least-privilege").starts_with("ok"), "{all}");
    assert!(line(&lines, "round-trip").starts_with("ok"), "{all}");
}

/// Every `isolation` line of a doctor run.
fn isolation_lines(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.get(5..).is_some_and(|r| r.starts_with("isolation:")))
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn doctor_warns_when_the_token_can_decrypt_with_another_clusters_key() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let o = ProviderOptions::new(&bao);
    let config = write_config(dir.path(), &o, |t| t);
    // Another cluster on the same OpenBao with its own key, as its configuration names it.
    bao.root(
        Method::POST,
        "transit/keys/k8s-etcd-beta",
        Some(json!({ "type": "aes256-gcm96" })),
    )
    .await;
    let beta = write_config(dir.path(), &o, |t| {
        t.replace(
            "[transit.key_id_scope]",
            "[transit]\nkey_name = \"k8s-etcd-beta\"\n[transit.key_id_scope]",
        )
    });

    // The lab's least-privilege policy: ok, and it says what it cannot see.
    let (code, lines) = doctor_with(&config, &[&beta]);
    let all = lines.join("\n");
    assert_eq!(code, 0, "{all}");
    let iso = isolation_lines(&lines);
    assert_eq!(iso.len(), 1, "{all}");
    assert!(iso[0].starts_with("ok   isolation:"), "{all}");
    assert!(iso[0].contains("nor with the 1 key(s)"), "{all}");
    assert!(
        iso[0].contains("cannot see other clusters' tokens"),
        "{all}"
    );
    assert!(
        iso[0].contains("k8s-etcd is the key name every cluster got"),
        "{all}"
    );

    // The same policy plus decrypt on the other cluster's key: a warning naming it.
    let policy = policy_text("transit", "k8s-etcd");
    let reach = format!(
        "{policy}path \"transit/decrypt/k8s-etcd-beta\" {{\n  capabilities = [\"update\"]\n}}\n"
    );
    bao.root(
        Method::PUT,
        "sys/policy/bao-kms-provider",
        Some(json!({ "policy": reach })),
    )
    .await;
    let (code, lines) = doctor_with(&config, &[&beta]);
    let all = lines.join("\n");
    assert_eq!(code, 0, "a warning does not fail doctor:\n{all}");
    let iso = isolation_lines(&lines);
    assert_eq!(iso.len(), 1, "{all}");
    assert!(
        iso[0].starts_with("warn isolation:")
            && iso[0].contains("transit/keys/k8s-etcd-beta")
            && iso[0].contains(&beta.display().to_string()),
        "{all}"
    );

    // A glob: every probe name is reachable, and so is the other cluster's key.
    let glob =
        format!("{policy}path \"transit/decrypt/*\" {{\n  capabilities = [\"update\"]\n}}\n");
    bao.root(
        Method::PUT,
        "sys/policy/bao-kms-provider",
        Some(json!({ "policy": glob })),
    )
    .await;
    let (_, lines) = doctor_with(&config, &[&beta]);
    let all = lines.join("\n");
    let iso = isolation_lines(&lines);
    assert_eq!(iso.len(), 2, "{all}");
    assert!(
        iso[0].starts_with("warn isolation:") && iso[0].contains("by pattern"),
        "{all}"
    );

    // Another configuration naming this very key: shared, whatever the policies.
    bao.root(
        Method::PUT,
        "sys/policy/bao-kms-provider",
        Some(json!({ "policy": policy })),
    )
    .await;
    let twin = write_config(dir.path(), &o, |t| t);
    let (_, lines) = doctor_with(&config, &[&twin]);
    let all = lines.join("\n");
    let iso = isolation_lines(&lines);
    assert!(
        iso.len() == 1 && iso[0].starts_with("warn") && iso[0].contains("names the same key"),
        "{all}"
    );

    // An unreadable --other-config fails the check.
    let (code, lines) = doctor_with(&config, &[&dir.path().join("missing.toml")]);
    let all = lines.join("\n");
    assert_eq!(code, 1, "{all}");
    assert!(
        line(&lines, "isolation").starts_with("FAIL") && all.contains("missing.toml"),
        "{all}"
    );
}

#[tokio::test]
async fn doctor_passes_over_tls_and_names_a_wrong_server_name_or_ca_file() {
    let bao = Bao::start_tls().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = ProviderOptions::new(&bao);
    let ca = bao.ca_file();
    let mut with = |extra: String| {
        o.openbao_extra = extra;
        write_config(dir.path(), &o, |t| t)
    };

    let (code, lines) = doctor(&with(format!(
        "ca_file = \"{}\"\ntls_server_name = \"localhost\"\n",
        ca.display()
    )));
    let all = lines.join("\n");
    assert_eq!(code, 0, "doctor passes over TLS:\n{all}");
    let tls = line(&lines, "tls");
    assert!(
        tls.starts_with("ok") && tls.contains("verified against") && tls.contains("\"localhost\""),
        "{all}"
    );

    let (code, lines) = doctor(&with(format!(
        "ca_file = \"{}\"\ntls_server_name = \"wrong.example\"\n",
        ca.display()
    )));
    let all = lines.join("\n");
    assert_eq!(code, 1);
    let tls = line(&lines, "tls");
    assert!(
        tls.starts_with("FAIL") && tls.contains("wrong.example"),
        "{all}"
    );
    assert!(line(&lines, "openbao-health").starts_with("skip"), "{all}");

    let (code, lines) = doctor(&with("ca_file = \"/nonexistent/ca.pem\"\n".into()));
    assert_eq!(code, 1);
    let tls = line(&lines, "tls");
    assert!(
        tls.starts_with("FAIL") && tls.contains("/nonexistent/ca.pem"),
        "{}",
        lines.join("\n")
    );
}

/// Every `openbao_kms_*` identifier in a text.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("openbao_kms_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_and_alert_rules_use_only_metrics_a_real_scrape_exposes() {
    let bao = Bao::start().await;
    let p = provider_after_round_trip(&bao).await;
    let scrape = Scrape::take(p.metrics_port).await;
    let samples = scrape.names();

    let path = repo_root().join("docs/grafana/bao-kms-provider.json");
    let text = std::fs::read_to_string(&path).expect("dashboard JSON exists");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    assert!(
        dashboard["title"].is_string() && dashboard["panels"].is_array(),
        "a Grafana dashboard"
    );
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 6, "the dashboard has queries: {queries:?}");
    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names_in(q)).collect();
    let unknown: Vec<_> = used.iter().filter(|n| !samples.contains(*n)).collect();
    assert!(unknown.is_empty(), "dashboard queries name metrics the provider does not expose: {unknown:?}\nexposed: {samples:?}");
    for family in &scrape.families {
        assert!(
            used.iter().any(|u| u.starts_with(family.as_str())),
            "the dashboard shows every metric; {family} is missing"
        );
    }

    let rules =
        std::fs::read_to_string(repo_root().join("docs/prometheus/bao-kms-provider.rules.yml"))
            .expect("the alert rules exist");
    let unknown: Vec<_> = metric_names_in(&rules)
        .into_iter()
        .filter(|n| !samples.contains(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "the alert rules query provider metrics a scrape does not show: {unknown:?}"
    );

    let doc = std::fs::read_to_string(repo_root().join("docs/operations.md"))
        .expect("docs/operations.md exists");
    let named = metric_names_in(&doc);
    let unknown: Vec<_> = named
        .iter()
        .filter(|n| !samples.contains(*n) && !scrape.families.contains(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/operations.md names metrics that do not exist: {unknown:?}"
    );
    for family in &scrape.families {
        assert!(
            named.iter().any(|n| n.starts_with(family.as_str())),
            "docs/operations.md documents {family}"
        );
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The `exp` claim of the JWT in `path`, decoded here rather than by the provider.
fn jwt_exp(path: &Path) -> i64 {
    let text = std::fs::read_to_string(path).expect("read JWT");
    let payload = text.trim().split('.').nth(1).expect("JWT payload");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON");
    claims["exp"].as_i64().expect("exp claim")
}

/// A JWT with `exp` and a signature OpenBao would refuse: enough for the expiry readers.
fn write_unsigned_jwt(path: &Path, exp: i64) {
    let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"bao-kms-provider","exp":{exp}}}"#));
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2lnbmF0dXJl\n"),
    )
    .expect("write JWT");
    std::fs::rename(&tmp, path).expect("replace JWT");
}

#[tokio::test]
async fn credential_expiry_follows_the_jwt_file_and_warns_within_the_margin() {
    let bao = Bao::start().await;
    let jwt = bao.own_jwt();
    let p = Provider::start(&ProviderOptions::with(&bao.addr, &jwt.path)).await;
    let series = [("credential", "jwt")];
    let m = Scrape::take(p.metrics_port).await;
    assert_eq!(
        m.value("openbao_kms_credential_expiry_timestamp_seconds", &series),
        jwt_exp(&jwt.path) as f64,
        "the JWT's exp claim:\n{}",
        m.body
    );
    wait_for(
        "the expiry warning in the log",
        Duration::from_secs(10),
        || async { p.logs().contains("expires within auth.expiry_warning") },
    )
    .await;
    let token = std::fs::read_to_string(&jwt.path).expect("read JWT");
    let signature = token.trim().rsplit('.').next().expect("signature");
    assert!(
        !p.logs().contains(signature),
        "the JWT never reaches the log"
    );

    // A replaced file is read again on the next probe; no restart, no reload.
    let later = unix_now() + 3 * 86400;
    write_unsigned_jwt(&jwt.path, later);
    let pr = &p;
    wait_for(
        "the new exp in the metric",
        Duration::from_secs(10),
        || async move {
            Scrape::take(pr.metrics_port)
                .await
                .value("openbao_kms_credential_expiry_timestamp_seconds", &series)
                == later as f64
        },
    )
    .await;
    assert!(!p.logs().contains("c2lnbmF0dXJl"), "{}", p.logs());

    // doctor: ok outside the margin, warn inside it, FAIL once expired.
    let dir = tempfile::tempdir().expect("tempdir");
    let o = ProviderOptions::with(&bao.addr, &jwt.path);
    let (_, lines) = doctor(&write_config(dir.path(), &o, |t| t));
    let ce = line(&lines, "credential-expiry");
    assert!(
        ce.starts_with("ok   ") && ce.contains("expires at"),
        "{}",
        lines.join("\n")
    );
    let (_, lines) = doctor(&write_config(dir.path(), &o, |t| {
        t.replace("[auth]\n", "[auth]\nexpiry_warning = \"4d\"\n")
    }));
    let ce = line(&lines, "credential-expiry");
    assert!(
        ce.starts_with("warn ") && ce.contains("within auth.expiry_warning (4days)"),
        "{}",
        lines.join("\n")
    );
    write_unsigned_jwt(&jwt.path, unix_now() - 120);
    let (code, lines) = doctor(&write_config(dir.path(), &o, |t| t));
    let ce = line(&lines, "credential-expiry");
    assert!(
        ce.starts_with("FAIL ") && ce.contains("expired at"),
        "{}",
        lines.join("\n")
    );
    assert_eq!(code, 1, "{}", lines.join("\n"));
}

/// notAfter as openssl prints it, turned into Unix seconds by date(1).
fn openssl_not_after(cert: &Path) -> i64 {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(cert)
        .output()
        .expect("openssl x509");
    let text = String::from_utf8(out.stdout).expect("utf8");
    let date = text.trim().strip_prefix("notAfter=").expect("notAfter=");
    let out = Command::new("date")
        .args(["-u", "+%s", "-d", date])
        .output()
        .expect("date");
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .parse()
        .expect("seconds")
}

#[tokio::test]
async fn credential_expiry_of_a_client_certificate_is_its_not_after() {
    let bao = Bao::start_tls().await;
    let (cert, key) = bao.setup_cert_auth();
    let mut o = ProviderOptions::with_auth(&bao.addr, cert_file_auth(&cert, &key));
    o.openbao_extra = ca_file_line(&bao.ca_file()) + "tls_server_name = \"localhost\"\n";
    let p = Provider::start(&o).await;
    let m = Scrape::take(p.metrics_port).await;
    assert_eq!(
        m.value(
            "openbao_kms_credential_expiry_timestamp_seconds",
            &[("credential", "client_certificate")]
        ),
        openssl_not_after(&cert) as f64,
        "{}",
        m.body
    );
    assert_eq!(
        m.samples
            .iter()
            .filter(|(n, _, _)| n == "openbao_kms_credential_expiry_timestamp_seconds")
            .count(),
        1,
        "one credential, one series"
    );
    // The lab's client certificate lives two days: beyond the default 24h margin.
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, lines) = doctor(&write_config(dir.path(), &o, |t| t));
    let ce = line(&lines, "credential-expiry");
    assert!(
        ce.starts_with("ok   ") && ce.contains("client certificate"),
        "{}",
        lines.join("\n")
    );

    // A re-issued certificate (one day) is in use, and so in the metric, only after a reload.
    let before = openssl_not_after(&cert);
    let lab = bao.dir.path();
    let reissued = dir.path().join("client.pem");
    let out = Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-CAcreateserial", "-in"])
        .arg(lab.join("client.csr"))
        .arg("-CA")
        .arg(lab.join("client-ca.pem"))
        .arg("-CAkey")
        .arg(lab.join("client-ca.key"))
        .arg("-extfile")
        .arg(lab.join("client.ext"))
        .arg("-out")
        .arg(&reissued)
        .output()
        .expect("openssl x509 -req");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = openssl_not_after(&reissued);
    assert!(
        after < before,
        "one day is sooner than two: {after} {before}"
    );
    std::fs::copy(&reissued, &cert).expect("replace the certificate");
    let series = [("credential", "client_certificate")];
    // Five probe intervals (300 ms): what must not change has had the time to.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pr = &p;
    assert_eq!(
        Scrape::take(p.metrics_port)
            .await
            .value("openbao_kms_credential_expiry_timestamp_seconds", &series),
        before as f64,
        "the certificate in use until a reload"
    );
    p.signal(libc::SIGHUP);
    wait_for(
        "the reloaded certificate's notAfter",
        Duration::from_secs(15),
        || async move {
            Scrape::take(pr.metrics_port)
                .await
                .value("openbao_kms_credential_expiry_timestamp_seconds", &series)
                == after as f64
        },
    )
    .await;
    assert!(
        p.logs()
            .contains("reloaded: new OpenBao client and credentials in use"),
        "{}",
        p.logs()
    );
}

#[tokio::test]
async fn doctor_kube_names_an_unusable_kubeconfig_and_an_unreachable_api_server() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &ProviderOptions::new(&bao), |t| t);
    let run = |kubeconfig: &Path| {
        let out = Command::new(provider_bin())
            .args(["doctor", "--kube", "--config"])
            .arg(&config)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdin(Stdio::null())
            .output()
            .expect("run doctor");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), text)
    };
    let missing = dir.path().join("missing.conf");
    let (code, out) = run(&missing);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "FAIL kube-readyz: kubeconfig {}",
            missing.display()
        )) && out.contains("skip kube-provider")
            && out.contains("skip kube-key-id"),
        "{out}"
    );
    // A kubeconfig as kubeadm writes it, pointing at a port nothing listens on.
    let unreachable = dir.path().join("admin.conf");
    std::fs::write(
        &unreachable,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: admin@k\ncontexts:\n- name: admin@k\n  context: {{cluster: k, user: admin}}\nclusters:\n- name: k\n  cluster: {{server: 'https://127.0.0.1:{}'}}\nusers:\n- name: admin\n  user: {{token: not-a-real-token}}\n",
            free_port()
        ),
    )
    .expect("write kubeconfig");
    let (code, out) = run(&unreachable);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL kube-readyz: GET https://127.0.0.1:")
            && !out.contains("not-a-real-token"),
        "{out}"
    );
}
