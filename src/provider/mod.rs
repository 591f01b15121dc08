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
    registry: Mutex<Registry>,
    store: Store,
    snapshot: watch::Sender<Arc<Snapshot>>,
}

impl Provider {
    /// Opens (and locks) the key registry under `state_dir`; fails if it is damaged or in use.
    pub(crate) fn new(
        settings: &Settings,
        client: Arc<openbao::Client>,
    ) -> Result<Self, StoreError> {
        let identity = key_identity(settings);
        let store = Store::open(&settings.server.state_dir, &identity.fingerprint())?;
        let registry = store.load()?;
        let provider = Self {
            client,
            identity,
            rotation: translate::promotion(settings),
            status: settings.status.clone(),
            // Known key_ids decrypt from the first request on, even before OpenBao answers a probe.
            snapshot: watch::channel(Arc::new(Snapshot {
                known: known_keys(&registry),
                ..Snapshot::default()
            }))
            .0,
            registry: Mutex::new(registry),
            store,
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
        self.snapshot().health(self.status.max_staleness)
    }

    pub(crate) fn max_staleness(&self) -> Duration {
        self.status.max_staleness
    }

    /// The key_id Status currently reports (empty before the first probe).
    pub(crate) fn status_key_id(&self) -> String {
        self.snapshot().key_id().unwrap_or_default().to_owned()
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
            healthz: match snap.health(self.status.max_staleness).verdict() {
                Ok(()) => "ok".to_owned(),
                Err(reason) => reason,
            },
            key_id: snap.key_id().unwrap_or_default().to_owned(),
        }
    }

    /// `plaintext` is within the KMS limits (checked by `kms`).
    async fn encrypt(&self, plaintext: &[u8]) -> Result<EncryptReply, KmsError> {
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
        let known = self
            .snapshot()
            .known
            .get(&input.key_id)
            .cloned()
            .ok_or(KmsError::UnknownKeyId)?;
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
