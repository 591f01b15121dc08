//! The TOML file as written by the operator. Every default lives here and nowhere else.
use serde::{Deserialize, Serialize};

/// Default location of the provider's configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/openbao-kms/config.toml";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub openbao: RawOpenBao,
    pub auth: RawAuth,
    pub transit: RawTransit,
    pub status: RawStatus,
    pub rotation: RawRotation,
    pub log: RawLog,
    pub telemetry: RawTelemetry,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub socket_path: String,
    pub socket_mode: String,
    pub state_dir: String,
    pub drain_timeout: String,
    pub start_timeout: String,
    /// The budget kube-apiserver gives each KMS call (its EncryptionConfiguration `timeout`).
    pub kms_timeout: String,
    /// HTTP/2 streams (concurrent KMS calls) per kube-apiserver connection.
    pub max_concurrent_streams: u32,
    /// KMS connections with no traffic for this long are closed.
    pub idle_timeout: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            socket_path: "/run/openbao-kms/kms.sock".into(),
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
pub struct RawOpenBao {
    pub address: RawAddresses,
    pub ca_file: String,
    pub tls_server_name: String,
    pub namespace: String,
    pub timeout: String,
    pub instance_id: String,
    /// Concurrent requests (and so connections) to OpenBao.
    pub max_connections: u32,
}

/// `address = "https://a:8200"`, or a list of nodes of one HA cluster, each a URL or a table
/// `{ url = "...", tls_server_name = "..." }` for a node whose certificate carries another name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged, try_from = "toml::Value")]
pub enum RawAddresses {
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
pub enum RawAddress {
    Url(String),
    Node(RawNode),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub url: String,
    #[serde(default)]
    pub tls_server_name: String,
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
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethodName {
    #[default]
    Jwt,
    Cert,
    Token,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub method: AuthMethodName,
    pub jwt: RawJwtAuth,
    pub cert: RawCertAuth,
    pub token: RawTokenAuth,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwtAuth {
    pub mount_path: String,
    pub role: String,
    pub jwt_file: String,
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
pub struct RawCertAuth {
    pub mount_path: String,
    pub name: String,
    pub cert_file: String,
    pub key_file: String,
    /// Where the client key lives: a PEM file (`key_file`) or a PKCS#11 token (HSM, TPM).
    pub key_source: KeySource,
    pub module_path: String,
    pub token_label: String,
    pub key_label: String,
    /// CKA_ID in hex; exactly one of `key_label` and `key_object_id`.
    pub key_object_id: String,
    pub pin_file: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
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
pub struct RawTokenAuth {
    pub token_file: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTransit {
    pub mount_path: String,
    pub key_name: String,
    pub key_id_scope: RawKeyIdScope,
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
pub struct RawKeyIdScope {
    pub provider_name: String,
    pub cluster_id: String,
    pub transit_mount_id: String,
    pub key_lineage_id: String,
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
pub struct RawStatus {
    pub probe_interval: String,
    pub deep_probe_interval: String,
    pub max_staleness: String,
    /// Consecutive failed probes before Status reports not ok (one blip must not flip every host).
    pub unhealthy_after: u32,
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
pub struct RawRotation {
    pub stable_observations: u32,
    pub activation_delay: String,
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
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Journald,
    Json,
    Text,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTelemetry {
    pub metrics_address: String,
    pub health_address: String,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            metrics_address: "127.0.0.1:8081".into(),
            health_address: "127.0.0.1:8082".into(),
        }
    }
}
