//! The background loop that keeps the Status snapshot honest: token upkeep and key metadata every
//! probe interval, an encrypt+decrypt round trip every deep probe interval (and after any change).
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;

use super::health::ProbeError;
use super::{known_keys, Provider, Snapshot};
use crate::keys::{associated_data, short_hash, Change};
use crate::openbao;
use crate::telemetry::metrics;

/// After a failure, probe again soon (but not in a tight loop) so recovery shows quickly.
const FIRST_RETRY: Duration = Duration::from_millis(500);

impl Provider {
    /// Runs probes until `shutdown` resolves. `heartbeat` is called after every probe attempt,
    /// so the watchdog and /livez see that this loop is alive.
    pub(crate) async fn run_probes<F: Fn() + Send + Sync>(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
        heartbeat: F,
    ) {
        tokio::pin!(shutdown);
        let mut last_deep: Option<Instant> = None;
        let mut retry = FIRST_RETRY;
        loop {
            let deep_due = last_deep.is_none_or(|t| t.elapsed() >= self.status.deep_probe_interval);
            let delay = match self.probe_once(deep_due).await {
                Ok(did_deep) => {
                    if did_deep {
                        last_deep = Some(Instant::now());
                    }
                    retry = FIRST_RETRY;
                    self.status.probe_interval
                }
                Err(_) => {
                    let d = retry.min(self.status.probe_interval);
                    retry = (retry * 2).min(self.status.probe_interval);
                    d
                }
            };
            heartbeat();
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One probe. Returns whether a deep probe ran; `Err` when anything failed (recorded in the snapshot).
    async fn probe_once(&self, deep_due: bool) -> Result<bool, Arc<ProbeError>> {
        match self.try_probe(deep_due).await {
            Ok(did_deep) => Ok(did_deep),
            Err(reason) => {
                let reason = Arc::new(reason);
                tracing::warn!(reason = %reason, "probe failed; Status reports not ok");
                self.update(|s| s.problem = Some(reason.clone()));
                Err(reason)
            }
        }
    }

    async fn try_probe(&self, deep_due: bool) -> Result<bool, ProbeError> {
        let ttl = self
            .client
            .maintain_token()
            .await
            .map_err(ProbeError::Login)?;
        match ttl {
            Some(ttl) => metrics::token_ttl(ttl),
            None => metrics::token_never_expires(),
        }
        let meta = self.client.read_key().await.map_err(ProbeError::ReadKey)?;
        if meta.key_type != openbao::contract::KEY_PROFILE.key_type {
            return Err(ProbeError::WrongKeyType {
                found: meta.key_type.clone(),
            });
        }
        let observation = super::translate::observation(&meta);
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let (registry, changed_active) = {
            let mut reg = self.registry.lock().await;
            let before_active = reg.active().map(|r| r.version);
            let mut next = reg.clone();
            let changes = next.observe(&observation, &self.identity, &self.rotation, now_unix)?;
            if next != *reg {
                self.store.save(&next).map_err(ProbeError::SaveRegistry)?;
                *reg = next;
            }
            log_changes(&changes, &reg);
            let after_active = reg.active().map(|r| r.version);
            (reg.clone(), before_active != after_active)
        };
        let active = registry
            .active()
            .map(|r| (r.version, r.key_id.clone()))
            .ok_or(ProbeError::NoActiveVersion)?;
        let blocked = registry.blocked_by_min_decryption(&observation);
        let warnings: Vec<String> = if blocked.is_empty() {
            Vec::new()
        } else {
            let names: Vec<String> = blocked.iter().map(|v| format!("v{v}")).collect();
            vec![format!(
                "Transit min_decryption_version {} (or trimming) blocks retained key versions {}; data written with them cannot be read",
                meta.min_decryption_version,
                names.join(", ")
            )]
        };
        metrics::key_version(active.0);
        metrics::active_key_id(&short_hash(&active.1));

        let mut deep_ok = None;
        let did_deep = deep_due || changed_active || self.snapshot().deep_ok_at.is_none();
        if did_deep {
            self.deep_probe(active.0, &active.1).await?;
            deep_ok = Some(Instant::now());
        }
        let known = known_keys(&registry);
        self.update(|s| {
            s.active = Some(active.clone());
            s.known = known;
            s.metadata_ok_at = Some(Instant::now());
            if deep_ok.is_some() {
                s.deep_ok_at = deep_ok;
            }
            s.problem = None;
            s.warnings = warnings;
        });
        Ok(did_deep)
    }

    /// Encrypts 32 random bytes with the active version and decrypts them again, as the
    /// apiserver will; proves auth, policy, key and AAD handling end to end.
    async fn deep_probe(&self, version: u32, key_id: &str) -> Result<(), ProbeError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rand::thread_rng().fill_bytes(seed.as_mut());
        let aad = associated_data(key_id);
        let enc = self
            .client
            .encrypt(seed.as_ref(), &aad, version)
            .await
            .map_err(ProbeError::ProbeEncrypt)?;
        let back = self
            .client
            .decrypt(&enc.ciphertext, &aad)
            .await
            .map_err(ProbeError::ProbeDecrypt)?;
        if back.as_slice() != seed.as_ref() {
            return Err(ProbeError::RoundTripMismatch);
        }
        Ok(())
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.snapshot.send_modify(|s| {
            let mut fresh = (**s).clone();
            f(&mut fresh);
            *s = Arc::new(fresh);
        });
        metrics::healthy(self.health().is_healthy());
    }
}

fn log_changes(changes: &[Change], reg: &crate::keys::Registry) {
    for c in changes {
        match c {
            Change::Adopted { active, retired } => {
                let key_id = reg
                    .records
                    .get(active)
                    .map(|r| r.key_id.as_str())
                    .unwrap_or("");
                tracing::info!(
                    version = active,
                    key_id,
                    ?retired,
                    "adopted Transit key: latest version active, older versions retired"
                )
            }
            Change::Pending { version } => tracing::info!(
                version,
                "new Transit key version seen; pending until stable"
            ),
            Change::Observed {
                version,
                observations,
            } => {
                tracing::debug!(
                    version,
                    observations,
                    "pending Transit key version observed again"
                )
            }
            Change::Promoted { from, to } => {
                let key_id = reg.records.get(to).map(|r| r.key_id.as_str()).unwrap_or("");
                tracing::info!(from = ?from, to, key_id, "promoted Transit key version: Status and Encrypt now use it")
            }
        }
    }
}
