//! The provider itself: ties the OpenBao client and the key registry together, keeps the Status
//! snapshot fresh from a background probe loop, and implements `kms::KeyService`.
mod health;
mod probe;
mod snapshot;
mod translate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};
use zeroize::Zeroizing;

use health::Health;
pub(crate) use health::{key_warnings, KeyWarning};
pub(crate) use snapshot::{KnownKey, Snapshot};
pub(crate) use translate::key_identity;

use crate::config::{Settings, StatusSettings};
use crate::keys::{associated_data, KeyIdentity, Promotion, Registry};
use crate::keys::{Store, StoreError};
use crate::kms::{self, DecryptInput, EncryptReply, KeyService, KmsError, StatusReply};
use crate::openbao;

pub(crate) struct Provider {
    client: Arc<openbao::Client>,
    identity: KeyIdentity,
    rotation: Promotion,
    status: StatusSettings,
    /// `auth.expiry_warning`, for the credential expiry check of each probe.
    auth_expiry_warning: Duration,
    registry: Mutex<Registries>,
    store: Store,
    /// When key metadata was last re-read for an unknown key_id (one at a time, at most once a
    /// second, so junk key_ids cannot turn into a flood of OpenBao reads).
    refreshed: Mutex<Option<std::time::Instant>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The trim record could not be read at the last probe (logged once until it can).
    trim_unreadable: std::sync::atomic::AtomicBool,
}

impl Provider {
    /// Opens (and locks) the key registry under `state_dir`; fails if it is damaged or in use
    /// by another process. A state_dir that cannot be written is no reason to stop: the
    /// provider serves from the verified registry (or adopts the key in memory on a first
    /// start), degraded, and takes the lock and saves once the directory is writable again.
    pub(crate) fn new(
        settings: &Settings,
        client: Arc<openbao::Client>,
    ) -> Result<Self, StoreError> {
        let identity = key_identity(settings);
        let (store, unwritable) =
            Store::open_for_serving(&settings.server.state_dir, &identity.fingerprint())?;
        if let Some(e) = &unwritable {
            tracing::warn!(error = %e, "state directory is not writable: serving from the verified key registry, degraded; retrying every probe");
        }
        let registry = store.load()?;
        let provider = Self {
            client,
            identity,
            rotation: translate::promotion(settings),
            status: settings.status.clone(),
            auth_expiry_warning: settings.auth_expiry_warning,
            // Known key_ids decrypt from the first request on, and Status reports the saved active
            // key_id, even before OpenBao answers a probe (a restart during an outage must not
            // make kube-apiserver stop writing).
            snapshot: watch::channel(Arc::new(Snapshot {
                known: known_keys(&registry),
                active: registry.active().map(|r| (r.version, r.key_id.clone())),
                ..Snapshot::default()
            }))
            .0,
            registry: Mutex::new(Registries {
                current: registry.clone(),
                saved: registry,
                degraded: unwritable.is_some(),
            }),
            store,
            refreshed: Mutex::new(None),
            trim_unreadable: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(provider)
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    pub(crate) fn health(&self) -> Health {
        self.snapshot()
            .health(self.status.max_staleness, self.status.unhealthy_after.get())
    }

    /// Whether the provider can do its job (Status, Encrypt, Decrypt), even when degraded by a
    /// warning such as an unsaved key registry; readiness waits for this, not for `health`.
    pub(crate) fn serving(&self) -> bool {
        !matches!(self.health(), Health::NotOk(_))
    }

    /// True when the key registry gave an active key_id at start: Status can be served at once.
    pub(crate) fn serves_from_registry(&self) -> bool {
        self.snapshot().active.is_some()
    }

    /// Before the first successful probe after a restart, Encrypt waits this long (within the
    /// call's budget) for the probe, then fails Unavailable.
    const FIRST_PROBE_WAIT: Duration = Duration::from_secs(1);

    /// Waits (bounded) while Status is served from the registry and the first probe has not
    /// finished; `Unavailable` when OpenBao has not answered.
    async fn wait_first_probe(&self) -> Result<(), KmsError> {
        let mut rx = self.snapshot.subscribe();
        let done = |s: &Arc<Snapshot>| !s.waiting_for_openbao() || s.problem.is_some();
        let bound = Self::FIRST_PROBE_WAIT.min(
            crate::deadline::current_or(Self::FIRST_PROBE_WAIT)
                .saturating_duration_since(std::time::Instant::now())
                / 2,
        );
        let _ = tokio::time::timeout(bound, rx.wait_for(done)).await;
        let snap = self.snapshot();
        if snap.waiting_for_openbao() {
            return Err(KmsError::Unavailable(
                snap.health(self.status.max_staleness, self.status.unhealthy_after.get())
                    .verdict()
                    .err()
                    .map_or_else(|| "waiting for OpenBao".into(), |r| r.to_string()),
            ));
        }
        Ok(())
    }

    /// The key_id Status currently reports (empty before the first probe).
    pub(crate) fn status_key_id(&self) -> String {
        self.snapshot().key_id().unwrap_or_default().to_owned()
    }
}

/// The key registry as the probe loop sees it (`current`, every version observed, never
/// forgotten) and as it was last saved or loaded (`saved`). They differ only while the state
/// directory cannot be written; then Encrypt keeps the saved active key (a promotion is held
/// back) while every version in `current` still decrypts.
struct Registries {
    current: Registry,
    saved: Registry,
    /// The last probe could not save or lock (so recovery is logged once).
    degraded: bool,
}

impl Registries {
    /// The registry whose active version Status reports and Encrypt uses: the saved one, or on
    /// a first start whose registry could not be written yet, the key adopted in memory.
    fn served(&self) -> &Registry {
        if self.saved.active().is_some() {
            &self.saved
        } else {
            &self.current
        }
    }
}

fn known_keys(registry: &Registry) -> HashMap<String, KnownKey> {
    registry
        .records
        .values()
        .map(|r| {
            (
                r.key_id.clone(),
                KnownKey {
                    version: r.version,
                    state: r.state,
                },
            )
        })
        .collect()
}

#[tonic::async_trait]
impl KeyService for Provider {
    fn status(&self) -> StatusReply {
        let snap = self.snapshot();
        StatusReply {
            healthz: match snap
                .health(self.status.max_staleness, self.status.unhealthy_after.get())
                .verdict()
            {
                Ok(()) => "ok".to_owned(),
                Err(reason) => reason.to_string(),
            },
            key_id: snap
                .status_key_id(self.status.unhealthy_after.get())
                .to_owned(),
        }
    }

    /// `plaintext` is within the KMS limits (checked by `kms`).
    async fn encrypt(&self, plaintext: &[u8]) -> Result<EncryptReply, KmsError> {
        self.wait_first_probe().await?;
        let snap = self.snapshot();
        let (version, key_id) = snap
            .active
            .clone()
            .ok_or_else(|| KmsError::FailedPrecondition("no active key yet".into()))?;
        match snap.age() {
            Some(age) if age <= self.status.max_staleness => {}
            Some(age) => {
                return Err(KmsError::FailedPrecondition(format!(
                    "key metadata is stale ({}s old); refusing to encrypt with a key that may have changed",
                    age.as_secs()
                )))
            }
            None => return Err(KmsError::FailedPrecondition("no key metadata yet".into())),
        }
        let out = self
            .client
            .encrypt(plaintext, &associated_data(&key_id), version)
            .await?;
        Ok(EncryptReply {
            ciphertext: out.ciphertext.into_bytes(),
            key_id,
            annotations: kms::key_version_annotation(version),
        })
    }

    /// `input` is within the KMS size limits (checked by `kms`).
    async fn decrypt(&self, input: DecryptInput) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let invalid = |m: String| Err(KmsError::InvalidArgument(m));
        let known = self.known_or_refresh(&input.key_id).await?;
        if input.claimed_key_version()? != Some(known.version) {
            return invalid(format!(
                "annotation {} does not match the key_id",
                kms::ANNOTATION_KEY_VERSION
            ));
        }
        let ciphertext = std::str::from_utf8(&input.ciphertext).map_err(|_| {
            KmsError::InvalidArgument("ciphertext is not a Transit ciphertext".into())
        })?;
        if openbao::ciphertext_version(ciphertext) != Some(known.version) {
            return invalid(
                "ciphertext is not a Transit ciphertext of the key_id's version".into(),
            );
        }
        Ok(self
            .client
            .decrypt(ciphertext, &associated_data(&input.key_id))
            .await?)
    }
}
