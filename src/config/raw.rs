//! The TOML file as written by the operator. Every default lives here and nowhere else.
use serde::{Deserialize, Serialize};

/// Default location of the provider's configuration file.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/openbao-kms/config.toml";
/// Where the KMS socket is, when neither the config nor `--socket` says (also the CLI's default).
pub(crate) const DEFAULT_SOCKET_PATH: &str = "/run/openbao-kms/kms.sock";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub(crate) server: RawServer,
    pub(crate) openbao: RawOpenBao,
    pub(crate) auth: RawAuth,
    pub(crate) transit: RawTransit,
    pub(crate) status: RawStatus,
    pub(crate) rotation: RawRotation,
    pub(crate) log: RawLog,
    pub(crate) telemetry: RawTelemetry,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawServer {
    pub(crate) socket_path: String,
    pub(crate) socket_mode: String,
    pub(crate) state_dir: String,
    pub(crate) drain_timeout: String,
    pub(crate) start_timeout: String,
    /// The budget kube-apiserver gives each KMS call (its EncryptionConfiguration `timeout`).
    pub(crate) kms_timeout: String,
    /// HTTP/2 streams (concurrent KMS calls) per kube-apiserver connection.
    pub(crate) max_concurrent_streams: u32,
    /// KMS connections with no traffic for this long are closed.
    pub(crate) idle_timeout: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            socket_path: DEFAULT_SOCKET_PATH.into(),
            socket_mode: "0600".into(),
            state_dir: "/var/lib/openbao-kms".into(),
            drain_timeout: "10s".into(),
            start_timeout: "2m".into(),
            kms_timeout: "3s".into(),
            max_concurrent_streams: 256,
            idle_timeout: "5m".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawOpenBao {
    pub(crate) address: RawAddresses,
    pub(crate) ca_file: String,
    pub(crate) tls_server_name: String,
    pub(crate) namespace: String,
    pub(crate) timeout: String,
    pub(crate) instance_id: String,
    /// Concurrent requests (and so connections) to OpenBao.
    pub(crate) max_connections: u32,
    /// Retries allowed, as a percentage of first attempts over the last 10 s.
    pub(crate) retry_budget_percent: u32,
    /// Retries allowed per second on top of the percentage, so a quiet provider can retry.
    pub(crate) retry_budget_min_per_second: u32,
}

/// `address = "https://a:8200"`, or a list of nodes of one HA cluster, each a URL or a table
/// `{ url = "...", tls_server_name = "..." }` for a node whose certificate carries another name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged, try_from = "toml::Value")]
pub(crate) enum RawAddresses {
    One(String),
    Many(Vec<RawAddress>),
}

/// By hand, so a wrong shape is named (serde's untagged enums only say "did not match").
impl TryFrom<toml::Value> for RawAddresses {
    type Error = String;

    fn try_from(v: toml::Value) -> Result<Self, String> {
        const SHAPE: &str = "openbao.address must be a URL string, or a list of URL strings and \
             { url = \"...\", tls_server_name = \"...\" } tables";
        match v {
            toml::Value::String(s) => Ok(Self::One(s)),
            toml::Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(RawAddress::Url(s)),
                    toml::Value::Table(t) => RawNode::deserialize(toml::Value::Table(t))
                        .map(RawAddress::Node)
                        .map_err(|e| format!("openbao.address: {}", e.message())),
                    other => Err(format!("{SHAPE}; found a {}", other.type_str())),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Self::Many),
            other => Err(format!("{SHAPE}; found a {}", other.type_str())),
        }
    }
}

impl Default for RawAddresses {
    fn default() -> Self {
        Self::One(String::new())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub(crate) enum RawAddress {
    Url(String),
    Node(RawNode),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) tls_server_name: String,
}

impl Default for RawOpenBao {
    fn default() -> Self {
        Self {
            address: RawAddresses::default(),
            ca_file: String::new(),
            tls_server_name: String::new(),
            namespace: String::new(),
            timeout: "2s".into(),
            instance_id: String::new(),
            max_connections: 64,
            retry_budget_percent: 20,
            retry_budget_min_per_second: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AuthMethodName {
    #[default]
    Jwt,
    Cert,
    Token,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAuth {
    pub(crate) method: AuthMethodName,
    /// Warn (log, `doctor`) when the JWT or client certificate ends within this long.
    pub(crate) expiry_warning: String,
    pub(crate) jwt: RawJwtAuth,
    pub(crate) cert: RawCertAuth,
    pub(crate) token: RawTokenAuth,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            method: AuthMethodName::default(),
            expiry_warning: "24h".into(),
            jwt: RawJwtAuth::default(),
            cert: RawCertAuth::default(),
            token: RawTokenAuth::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawJwtAuth {
    pub(crate) mount_path: String,
    pub(crate) role: String,
    pub(crate) jwt_file: String,
}

impl Default for RawJwtAuth {
    fn default() -> Self {
        Self {
            mount_path: "jwt".into(),
            role: "bao-kms-provider".into(),
            jwt_file: "/var/lib/openbao-kms/identity.jwt".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCertAuth {
    pub(crate) mount_path: String,
    pub(crate) name: String,
    pub(crate) cert_file: String,
    pub(crate) key_file: String,
    /// Where the client key lives: a PEM file (`key_file`) or a PKCS#11 token (HSM, TPM).
    pub(crate) key_source: KeySource,
    pub(crate) module_path: String,
    pub(crate) token_label: String,
    pub(crate) key_label: String,
    /// CKA_ID in hex; exactly one of `key_label` and `key_object_id`.
    pub(crate) key_object_id: String,
    pub(crate) pin_file: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeySource {
    #[default]
    File,
    Pkcs11,
}

impl Default for RawCertAuth {
    fn default() -> Self {
        Self {
            mount_path: "cert".into(),
            name: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            key_source: KeySource::File,
            module_path: String::new(),
            token_label: String::new(),
            key_label: String::new(),
            key_object_id: String::new(),
            pin_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTokenAuth {
    pub(crate) token_file: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTransit {
    pub(crate) mount_path: String,
    pub(crate) key_name: String,
    pub(crate) key_id_scope: RawKeyIdScope,
}

impl Default for RawTransit {
    fn default() -> Self {
        Self {
            mount_path: "transit".into(),
            key_name: "k8s-etcd".into(),
            key_id_scope: RawKeyIdScope::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawKeyIdScope {
    pub(crate) provider_name: String,
    pub(crate) cluster_id: String,
    pub(crate) transit_mount_id: String,
    pub(crate) key_lineage_id: String,
}

impl Default for RawKeyIdScope {
    fn default() -> Self {
        Self {
            provider_name: "openbao-kms".into(),
            cluster_id: String::new(),
            transit_mount_id: String::new(),
            key_lineage_id: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStatus {
    pub(crate) probe_interval: String,
    pub(crate) deep_probe_interval: String,
    pub(crate) max_staleness: String,
    /// Consecutive failed probes before Status reports not ok (one blip must not flip every host).
    pub(crate) unhealthy_after: u32,
}

impl Default for RawStatus {
    fn default() -> Self {
        Self {
            probe_interval: "30s".into(),
            deep_probe_interval: "5m".into(),
            max_staleness: "2m".into(),
            unhealthy_after: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRotation {
    pub(crate) stable_observations: u32,
    pub(crate) activation_delay: String,
}

impl Default for RawRotation {
    fn default() -> Self {
        Self {
            stable_observations: 3,
            activation_delay: "2m".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Auto,
    Journald,
    Json,
    Text,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLog {
    pub(crate) level: LogLevel,
    pub(crate) format: LogFormat,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTelemetry {
    pub(crate) metrics_address: String,
    pub(crate) health_address: String,
    /// Open connections per listener; more are closed at once, so a local client cannot use up
    /// the descriptors the KMS socket and OpenBao need.
    pub(crate) max_connections: u32,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            metrics_address: "127.0.0.1:8081".into(),
            health_address: "127.0.0.1:8082".into(),
            max_connections: 64,
        }
    }
}
