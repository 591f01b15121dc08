//! Validated, typed settings. Built only by `validate`, so holding one means the config was checked.
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

pub use super::raw::{LogFormat, LogLevel};

#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub openbao: OpenBaoSettings,
    pub auth: AuthSettings,
    pub transit: TransitSettings,
    pub status: StatusSettings,
    pub rotation: RotationSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub socket_path: PathBuf,
    pub socket_mode: u32,
    pub state_dir: PathBuf,
    pub drain_timeout: Duration,
    /// How long systemd is asked to wait for OpenBao at start before the start job fails (so
    /// units ordered after this one, like kubelet, are not held back indefinitely).
    pub start_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct OpenBaoSettings {
    pub address: reqwest::Url,
    pub ca_file: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub namespace: Option<String>,
    pub timeout: Duration,
    pub instance_id: String,
}

#[derive(Debug, Clone)]
pub enum AuthSettings {
    Jwt {
        mount_path: String,
        role: String,
        jwt_file: PathBuf,
    },
    Cert {
        mount_path: String,
        name: Option<String>,
        cert_file: PathBuf,
        key: ClientKey,
    },
    Token {
        token_file: PathBuf,
    },
}

impl AuthSettings {
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::Jwt { .. } => "jwt",
            Self::Cert { .. } => "cert",
            Self::Token { .. } => "token",
        }
    }

    /// The auth mount path, for the policy and the doctor; token auth has none of its own.
    pub fn mount_path(&self) -> Option<&str> {
        match self {
            Self::Jwt { mount_path, .. } | Self::Cert { mount_path, .. } => Some(mount_path),
            Self::Token { .. } => None,
        }
    }
}

/// Where the cert-auth client key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    File(PathBuf),
    Pkcs11(Pkcs11Settings),
}

/// A non-extractable key on a PKCS#11 token; the PIN is read from `pin_file` at (re)load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    pub module_path: PathBuf,
    pub token_label: String,
    pub key: Pkcs11KeyRef,
    pub pin_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkcs11KeyRef {
    Label(String),
    /// CKA_ID bytes.
    Id(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct TransitSettings {
    pub mount_path: String,
    pub key_name: String,
    pub key_id_scope: KeyIdScope,
}

/// Identity-bearing names hashed into every key_id; changing one changes every key_id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdScope {
    pub provider_name: String,
    pub cluster_id: String,
    pub transit_mount_id: String,
    pub key_lineage_id: String,
}

#[derive(Debug, Clone)]
pub struct StatusSettings {
    pub probe_interval: Duration,
    pub deep_probe_interval: Duration,
    pub max_staleness: Duration,
}

#[derive(Debug, Clone)]
pub struct RotationSettings {
    pub stable_observations: NonZeroU32,
    pub activation_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub metrics_address: Option<SocketAddr>,
    pub health_address: Option<SocketAddr>,
}
