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
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            socket_path: DEFAULT_SOCKET_PATH.into(),
            socket_mode: "0600".into(),
            state_dir: "/var/lib/openbao-kms".into(),
            drain_timeout: "10s".into(),
            start_timeout: "2m".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawOpenBao {
    pub(crate) address: String,
    pub(crate) ca_file: String,
    pub(crate) tls_server_name: String,
    pub(crate) namespace: String,
    pub(crate) timeout: String,
    pub(crate) instance_id: String,
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
pub(crate) enum AuthMethodName {
    #[default]
    Jwt,
    Cert,
    Token,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAuth {
    pub(crate) method: AuthMethodName,
    pub(crate) jwt: RawJwtAuth,
    pub(crate) cert: RawCertAuth,
    pub(crate) token: RawTokenAuth,
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
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            metrics_address: "127.0.0.1:8081".into(),
            health_address: "127.0.0.1:8082".into(),
        }
    }
}
