//! Typed probe results: why a probe failed (`ProbeError`) and what Status, `/readyz`, READY=1
//! and the `healthy` gauge make of the snapshot (`Health`).
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::keys::{Refusal, StoreError};
use crate::openbao;

/// Whether a snapshot that is `Degraded` (serving, with warnings) counts as healthy for Status,
/// `/readyz`, READY=1 and the `healthy` gauge. Today a warning makes Status not ok, so the
/// operator sees it where the apiserver reports KMS health; this is the one line to change.
const DEGRADED_IS_HEALTHY: bool = false;

/// Why one probe failed; the snapshot keeps the last one until a probe succeeds again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("OpenBao login: {0}")]
    Login(#[source] openbao::Error),
    #[error("reading Transit key: {0}")]
    ReadKey(#[source] openbao::Error),
    #[error("Transit key type is {found:?}, expected {:?}", openbao::contract::KEY_PROFILE.key_type)]
    WrongKeyType { found: String },
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("saving key registry: {0}")]
    SaveRegistry(#[source] StoreError),
    #[error("the key registry has no active version")]
    NoActiveVersion,
    #[error("probe encrypt: {0}")]
    ProbeEncrypt(#[source] openbao::Error),
    #[error("probe decrypt: {0}")]
    ProbeDecrypt(#[source] openbao::Error),
    #[error("probe decrypt returned different bytes than were encrypted")]
    RoundTripMismatch,
}

/// Why the provider is not ok.
#[derive(Debug, Clone)]
pub(crate) enum NotOk {
    /// No version is active yet; the last probe error, if any, says why.
    NoActiveKey(Option<Arc<ProbeError>>),
    /// The last probe failed.
    Probe(Arc<ProbeError>),
    /// The last successful metadata probe is older than `status.max_staleness`.
    Stale(Duration),
    NoMetadata,
    WaitingForDeepProbe,
}

impl fmt::Display for NotOk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoActiveKey(Some(p)) => write!(f, "no active key yet: {p}"),
            Self::NoActiveKey(None) => {
                f.write_str("no active key yet: waiting for the first key metadata probe")
            }
            Self::Probe(p) => write!(f, "{p}"),
            Self::Stale(age) => write!(f, "key metadata is stale ({}s old)", age.as_secs()),
            Self::NoMetadata => f.write_str("no key metadata yet"),
            Self::WaitingForDeepProbe => f.write_str("waiting for the first encrypt/decrypt probe"),
        }
    }
}

/// The provider's health as computed from one snapshot.
#[derive(Debug, Clone)]
pub(crate) enum Health {
    Ok,
    /// Serving, but something the operator must see (e.g. min_decryption_version blocks
    /// retained versions). Never empty.
    Degraded(Vec<String>),
    NotOk(NotOk),
}

impl Health {
    /// `Ok` when Status may say `ok`; otherwise the one-line reason Status, `/readyz` and
    /// `systemctl status` show.
    pub(crate) fn verdict(&self) -> Result<(), String> {
        match self {
            Self::Ok => Ok(()),
            Self::Degraded(_) if DEGRADED_IS_HEALTHY => Ok(()),
            Self::Degraded(warnings) => Err(warnings.first().cloned().unwrap_or_default()),
            Self::NotOk(reason) => Err(reason.to_string()),
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.verdict().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_make_status_not_ok_today() {
        let h = Health::Degraded(vec!["min_decryption_version blocks v1".into()]);
        assert_eq!(h.verdict(), Err("min_decryption_version blocks v1".into()));
        assert!(Health::Ok.is_healthy());
        let stale = Health::NotOk(NotOk::Stale(Duration::from_secs(7)));
        assert_eq!(
            stale.verdict(),
            Err("key metadata is stale (7s old)".into())
        );
    }
}
