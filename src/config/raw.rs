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
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            socket_path: "/run/openbao-kms/kms.sock".into(),
            socket_mode: "0600".into(),
            state_dir: "/var/lib/openbao-kms".into(),
            drain_timeout: "10s".into(),
            start_timeout: "2m".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOpenBao {
    pub address: String,
    pub ca_file: String,
    pub tls_server_name: String,
    pub namespace: String,
    pub timeout: String,
    pub instance_id: String,
}

impl Default for RawOpenBao {
    fn default() -> Self {
        Self {
            address: String::new(),
            ca_file: String::new(),
            tls_server_name: String::new(),
            namespace: String::new(),
            timeout: "2s".into(),
            instance_id: String::new(),
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
}

impl Default for RawStatus {
    fn default() -> Self {
        Self {
            probe_interval: "30s".into(),
            deep_probe_interval: "5m".into(),
            max_staleness: "2m".into(),
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
