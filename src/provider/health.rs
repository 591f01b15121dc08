//! Typed probe results: why a probe failed (`ProbeError`) and what Status, `/readyz`, READY=1
//! and the `healthy` gauge make of the snapshot (`Health`).
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::keys::{Refusal, Registry, StoreError, TrimRecord};
use crate::openbao;

/// Whether a snapshot that is `Degraded` (serving, with warnings) counts as healthy for Status,
/// `/readyz`, READY=1 and the `healthy` gauge. It does: a warning (e.g. min_decryption_version)
/// goes to metrics (`openbao_kms_key_warnings`), the journal and `doctor`, never to healthz, so
/// it cannot turn every API server's KMS health not ok at once.
const DEGRADED_IS_HEALTHY: bool = true;

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
    #[error("the key registry has no active version")]
    NoActiveVersion,
    #[error("probe encrypt: {0}")]
    ProbeEncrypt(#[source] openbao::Error),
    #[error("probe decrypt: {0}")]
    ProbeDecrypt(#[source] openbao::Error),
    #[error("probe decrypt returned different bytes than were encrypted")]
    RoundTripMismatch,
}

impl ProbeError {
    /// OpenBao itself answered that the key is gone (404) or that this provider may no longer
    /// use it (403 after a fresh login): a decision about the key, not an outage.
    pub(crate) fn key_withdrawn(&self) -> bool {
        match self {
            Self::ReadKey(e) | Self::ProbeEncrypt(e) | Self::ProbeDecrypt(e) => matches!(
                e.class(),
                openbao::ErrorClass::PermissionDenied | openbao::ErrorClass::NotFound
            ),
            _ => false,
        }
    }
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
    /// Restarted with a key registry: Status serves the saved key_id until a probe succeeds.
    WaitingForOpenBao(Option<Arc<ProbeError>>),
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
            Self::WaitingForOpenBao(Some(p)) => write!(f, "waiting for OpenBao: {p}"),
            Self::WaitingForOpenBao(None) => {
                f.write_str("waiting for OpenBao: the first key metadata probe has not finished")
            }
        }
    }
}

/// A condition that does not stop serving but must be seen: metrics
/// (`openbao_kms_key_warnings`), the journal and `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyWarning {
    /// Transit's `min_decryption_version` (or trimming) blocks versions the registry retains.
    RetainedVersionsBlocked {
        min_decryption_version: u32,
        versions: Vec<u32>,
    },
    /// `min_decryption_version` is above 1: data written before this provider adopted the key
    /// with older versions cannot be read.
    OlderVersionsUnreadable { min_decryption_version: u32 },
}

impl fmt::Display for KeyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RetainedVersionsBlocked {
                min_decryption_version,
                versions,
            } => {
                let names: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
                write!(
                    f,
                    "Transit min_decryption_version {min_decryption_version} (or trimming) blocks retained key versions {}; data written with them cannot be read",
                    names.join(", ")
                )
            }
            Self::OlderVersionsUnreadable {
                min_decryption_version,
            } => write!(
                f,
                "Transit min_decryption_version is {min_decryption_version}: data written with older versions (before this provider adopted the key) cannot be read"
            ),
        }
    }
}

/// The key warnings for this key metadata and registry: the one rule the probe loop and
/// `doctor` share. A trim record that covers `min_decryption_version` says the versions below
/// its N were trimmed on purpose after a clean scan, so they are no warning; a higher
/// `min_decryption_version` is a trim nobody recorded, and warns as if there were no record.
pub(crate) fn key_warnings(
    registry: &Registry,
    meta: &openbao::KeyMetadata,
    trim: Option<&TrimRecord>,
) -> Vec<KeyWarning> {
    let min = meta.min_decryption_version;
    let trimmed_below = trim
        .filter(|t| t.covers(min))
        .map(|t| t.min_decryption_version);
    let blocked: Vec<u32> = registry
        .blocked_by_min_decryption(&super::translate::observation(meta))
        .into_iter()
        .filter(|v| trimmed_below.is_none_or(|n| *v >= n))
        .collect();
    if !blocked.is_empty() {
        vec![KeyWarning::RetainedVersionsBlocked {
            min_decryption_version: min,
            versions: blocked,
        }]
    } else if min > 1 && trimmed_below.is_none() {
        vec![KeyWarning::OlderVersionsUnreadable {
            min_decryption_version: min,
        }]
    } else {
        Vec::new()
    }
}

/// Why the key registry cannot be saved (or locked) on this host, and what serving does meanwhile.
#[derive(Debug, Clone)]
pub(crate) enum RegistryFault {
    /// Nothing was ever saved: the key is adopted in memory only.
    InMemoryOnly(Arc<StoreError>),
    /// The registry changed and cannot be saved: Encrypt keeps the saved active key.
    PromotionsWait(Arc<StoreError>),
    /// Nothing to save, but the lock cannot be taken.
    CannotLock(Arc<StoreError>),
}

impl fmt::Display for RegistryFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InMemoryOnly(e) => {
                write!(f, "key registry not saved, key adopted in memory only: {e}")
            }
            Self::PromotionsWait(e) => write!(
                f,
                "key registry not saved, Encrypt keeps the saved active key and promotions wait: {e}"
            ),
            Self::CannotLock(e) => write!(
                f,
                "key registry cannot be locked, serving from the verified registry: {e}"
            ),
        }
    }
}

/// The one reason Status (`healthz`), `/readyz` and `systemctl status` give when not ok; its
/// `Display` is the text they show.
#[derive(Debug, Clone)]
pub(crate) enum Reason {
    Warning(KeyWarning),
    Registry(RegistryFault),
    NotOk(NotOk),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Warning(w) => w.fmt(f),
            Self::Registry(r) => r.fmt(f),
            Self::NotOk(n) => n.fmt(f),
        }
    }
}

/// The provider's health as computed from one snapshot.
#[derive(Debug, Clone)]
pub(crate) enum Health {
    Ok,
    /// Serving, but something the operator must see (e.g. min_decryption_version blocks
    /// retained versions). Never empty.
    Degraded(Vec<KeyWarning>),
    /// Serving, but this host has a fault of its own that its Status must name (the key
    /// registry cannot be saved: promotions wait, a restart forgets what was not saved).
    /// Unlike a key warning it is local to one host, so it cannot flip every API server at once.
    Impaired(RegistryFault),
    NotOk(NotOk),
}

impl Health {
    /// `Ok` when Status may say `ok`; otherwise the reason Status, `/readyz` and
    /// `systemctl status` show (its `Display`, one line).
    pub(crate) fn verdict(&self) -> Result<(), Reason> {
        match self {
            Self::Ok => Ok(()),
            Self::Degraded(_) if DEGRADED_IS_HEALTHY => Ok(()),
            Self::Degraded(warnings) => match warnings.first() {
                Some(w) => Err(Reason::Warning(w.clone())),
                None => Ok(()),
            },
            Self::Impaired(fault) => Err(Reason::Registry(fault.clone())),
            Self::NotOk(reason) => Err(Reason::NotOk(reason.clone())),
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
    fn warnings_do_not_make_status_not_ok() {
        let h = Health::Degraded(vec![KeyWarning::RetainedVersionsBlocked {
            min_decryption_version: 2,
            versions: vec![1],
        }]);
        assert!(h.verdict().is_ok());
        assert!(Health::Ok.is_healthy());
        let unsaved = Health::Impaired(RegistryFault::InMemoryOnly(Arc::new(
            StoreError::ScopeMismatch {
                path: "/s/key-registry.json".into(),
            },
        )));
        assert_eq!(
            unsaved.verdict().map_err(|r| r.to_string()),
            Err("key registry not saved, key adopted in memory only: key registry /s/key-registry.json belongs to another key scope (config changed provider_name, cluster, instance, mount or key); refusing to mix them".into())
        );
        let stale = Health::NotOk(NotOk::Stale(Duration::from_secs(7)));
        assert_eq!(
            stale.verdict().map_err(|r| r.to_string()),
            Err("key metadata is stale (7s old)".into())
        );
    }

    /// The texts operators see in Status, `/readyz`, the journal and `doctor`.
    #[test]
    fn reason_texts_are_the_ones_operators_see() {
        let blocked = KeyWarning::RetainedVersionsBlocked {
            min_decryption_version: 3,
            versions: vec![1, 2],
        };
        assert_eq!(
            blocked.to_string(),
            "Transit min_decryption_version 3 (or trimming) blocks retained key versions v1, v2; data written with them cannot be read"
        );
        let older = KeyWarning::OlderVersionsUnreadable {
            min_decryption_version: 4,
        };
        assert_eq!(
            older.to_string(),
            "Transit min_decryption_version is 4: data written with older versions (before this provider adopted the key) cannot be read"
        );
        let e = || {
            Arc::new(StoreError::ScopeMismatch {
                path: "/s/r".into(),
            })
        };
        let tail = "key registry /s/r belongs to another key scope (config changed provider_name, cluster, instance, mount or key); refusing to mix them";
        assert_eq!(
            Reason::Registry(RegistryFault::PromotionsWait(e())).to_string(),
            format!("key registry not saved, Encrypt keeps the saved active key and promotions wait: {tail}")
        );
        assert_eq!(
            Reason::Registry(RegistryFault::CannotLock(e())).to_string(),
            format!("key registry cannot be locked, serving from the verified registry: {tail}")
        );
        assert_eq!(
            Reason::NotOk(NotOk::WaitingForDeepProbe).to_string(),
            "waiting for the first encrypt/decrypt probe"
        );
    }

    fn registry(versions: &[u32]) -> Registry {
        let records: serde_json::Map<String, serde_json::Value> = versions
            .iter()
            .map(|v| {
                let state = if Some(v) == versions.last() {
                    "active"
                } else {
                    "retired"
                };
                let record = serde_json::json!({
                    "version": v, "created_unix": 1000 + v, "key_id": format!("k{v}"),
                    "state": state, "first_seen_unix": 0, "observations": 0,
                });
                (v.to_string(), record)
            })
            .collect();
        serde_json::from_value(serde_json::json!({ "records": records })).expect("registry")
    }

    fn meta(latest: u32, min_decryption_version: u32) -> openbao::KeyMetadata {
        openbao::KeyMetadata::profile_key(latest, min_decryption_version)
    }

    fn trimmed_below(n: u32) -> TrimRecord {
        TrimRecord {
            min_decryption_version: n,
            recorded_unix: 0,
            scope: "s".into(),
            scans: Vec::new(),
        }
    }

    #[test]
    fn a_trim_record_covering_min_decryption_version_silences_the_warnings() {
        let reg = registry(&[1, 2, 3]);
        assert_eq!(
            key_warnings(&reg, &meta(3, 3), None),
            vec![KeyWarning::RetainedVersionsBlocked {
                min_decryption_version: 3,
                versions: vec![1, 2],
            }]
        );
        assert_eq!(
            key_warnings(&reg, &meta(3, 3), Some(&trimmed_below(3))),
            vec![]
        );
        // Recorded ahead of raising it: already covered.
        assert_eq!(
            key_warnings(&reg, &meta(3, 2), Some(&trimmed_below(3))),
            vec![]
        );
        // Adopted after versions below were gone: nothing retained, nothing unreadable.
        let adopted = registry(&[3]);
        assert_eq!(
            key_warnings(&adopted, &meta(3, 3), None),
            vec![KeyWarning::OlderVersionsUnreadable {
                min_decryption_version: 3
            }]
        );
        assert_eq!(
            key_warnings(&adopted, &meta(3, 3), Some(&trimmed_below(3))),
            vec![]
        );
        assert_eq!(key_warnings(&reg, &meta(3, 1), None), vec![]);
    }

    #[test]
    fn a_trim_above_the_record_warns_as_without_one() {
        let reg = registry(&[1, 2, 3]);
        for record in [None, Some(trimmed_below(2))] {
            assert_eq!(
                key_warnings(&reg, &meta(3, 3), record.as_ref()),
                vec![KeyWarning::RetainedVersionsBlocked {
                    min_decryption_version: 3,
                    versions: vec![1, 2],
                }]
            );
        }
        let adopted = registry(&[3]);
        assert_eq!(
            key_warnings(&adopted, &meta(3, 3), Some(&trimmed_below(2))),
            vec![KeyWarning::OlderVersionsUnreadable {
                min_decryption_version: 3
            }]
        );
    }
}
