//! The background loop that keeps the Status snapshot honest: token upkeep and key metadata every
//! probe interval, an encrypt+decrypt round trip every deep probe interval (and after any change).
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;

use super::health::{key_warnings, ProbeError, RegistryFault};
use super::{known_keys, Provider, Snapshot};
use crate::keys::{
    apiserver_hash, associated_data, short_hash, trim, Change, Sighting, TrimRecord,
};
use crate::openbao;
use crate::telemetry::metrics;

/// After a failure, probe again soon (but not in a tight loop) so recovery shows quickly.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Shortest delay between probes after a failure while serving.
const MIN_RETRY: Duration = Duration::from_millis(100);

/// Unknown key_ids re-read key metadata at most this often.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

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
            let delay = match self.probe_once(deep_due, Sighting::Scheduled).await {
                Ok(did_deep) => {
                    if did_deep {
                        last_deep = Some(Instant::now());
                    }
                    retry = FIRST_RETRY;
                    self.status.probe_interval
                }
                Err(_) if self.snapshot().age().is_some() => {
                    // Serving with fresh metadata: `unhealthy_after` failures take about one
                    // probe interval, so a blip does not flip Status but an outage shows.
                    (self.status.probe_interval / self.status.unhealthy_after.get()).max(MIN_RETRY)
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

    /// The version behind `key_id`. A key_id this host has not seen may come from another host
    /// that already promoted a version this one has not read yet: key metadata is read once
    /// more before answering NotFound. That read records a new version (so it decrypts) but is
    /// no rotation observation: clients sending unknown key_ids cannot hurry a promotion.
    pub(super) async fn known_or_refresh(
        &self,
        key_id: &str,
    ) -> Result<super::KnownKey, crate::kms::KmsError> {
        if let Some(k) = self.snapshot().known.get(key_id) {
            return Ok(k.clone());
        }
        {
            let mut last = self.refreshed.lock().await;
            // Another caller may have refreshed while this one waited for the lock.
            if let Some(k) = self.snapshot().known.get(key_id) {
                return Ok(k.clone());
            }
            if last.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) {
                *last = Some(Instant::now());
                tracing::info!(
                    key_id = %crate::kms::clip(key_id),
                    "Decrypt for a key_id not seen yet; reading key metadata once more"
                );
                let _ = self.probe_once(false, Sighting::OnDemand).await;
            }
        }
        self.snapshot()
            .known
            .get(key_id)
            .cloned()
            .ok_or(crate::kms::KmsError::UnknownKeyId)
    }

    /// One probe. Returns whether a deep probe ran; `Err` when anything failed (recorded in the snapshot).
    async fn probe_once(
        &self,
        deep_due: bool,
        sighting: Sighting,
    ) -> Result<bool, Arc<ProbeError>> {
        match self.try_probe(deep_due, sighting).await {
            Ok(did_deep) => Ok(did_deep),
            Err(reason) => {
                let reason = Arc::new(reason);
                let failures = self.snapshot().failures.saturating_add(1);
                tracing::warn!(reason = %reason, failures, unhealthy_after = self.status.unhealthy_after.get(), "probe failed");
                self.update(|s| {
                    s.problem = Some(reason.clone());
                    s.failures = failures;
                });
                Err(reason)
            }
        }
    }

    async fn try_probe(&self, deep_due: bool, sighting: Sighting) -> Result<bool, ProbeError> {
        // Before the login: an expired credential is what makes it fail.
        self.client
            .watch_credential_expiry(self.auth_expiry_warning);
        let ttl = self
            .client
            .maintain_token()
            .await
            .map_err(ProbeError::Login)?;
        match ttl {
            Some(ttl) => metrics::token_ttl(ttl),
            None => metrics::token_never_expires(),
        }
        let meta = self.client.read_key().await.map_err(|e| {
            // A refused or impossible login is the reason, whatever request met it.
            if e.class().is_login() {
                ProbeError::Login(e)
            } else {
                ProbeError::ReadKey(e)
            }
        })?;
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
        let (registry, active, changed_active, unsaved) = {
            let mut regs = self.registry.lock().await;
            let before_active = regs.served().active().map(|r| r.version);
            let mut next = regs.current.clone();
            let changes = next.observe(
                &observation,
                sighting,
                &self.identity,
                &self.rotation,
                now_unix,
            )?;
            // Observations count in memory even while they cannot be saved.
            regs.current = next;
            let unsaved = self.persist(&mut regs);
            log_changes(&changes, &regs.current, unsaved.is_some());
            let active = regs
                .served()
                .active()
                .map(|r| (r.version, r.key_id.clone()))
                .ok_or(ProbeError::NoActiveVersion)?;
            let changed = before_active != Some(active.0);
            (regs.current.clone(), active, changed, unsaved)
        };
        let warnings = key_warnings(&registry, &meta, self.trim_record().as_ref());
        metrics::warnings(warnings.len());
        metrics::registry_unsaved(unsaved.is_some());
        if warnings != self.snapshot().warnings {
            for w in &warnings {
                tracing::warn!(warning = %w, "key warning (serving continues; see `doctor`)");
            }
        }
        metrics::key_version(active.0);
        metrics::active_key_id(
            &short_hash(&active.1),
            &apiserver_hash(&active.1),
            &self.identity.provider_name,
        );

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
            s.failures = 0;
            s.warnings = warnings;
            s.registry_fault = unsaved;
        });
        Ok(did_deep)
    }

    /// The trim record, read on every probe (it is tiny). One that cannot be read is logged
    /// once and counts as absent: it can only silence warnings, never stop serving.
    fn trim_record(&self) -> Option<TrimRecord> {
        use std::sync::atomic::Ordering::Relaxed;
        match trim::load(self.store.dir(), &self.identity.fingerprint()) {
            Ok(record) => {
                self.trim_unreadable.store(false, Relaxed);
                record
            }
            Err(e) => {
                if !self.trim_unreadable.swap(true, Relaxed) {
                    tracing::warn!(error = %e, "trim record not readable; key warnings are given as if there were none");
                }
                None
            }
        }
    }

    /// Saves the registry when it changed (or an earlier save failed), taking the lock first
    /// if the state directory was not writable before. `Some(reason)` while it cannot: the
    /// degradation that health, metrics and logs report.
    fn persist(&self, regs: &mut super::Registries) -> Option<RegistryFault> {
        let result = if regs.current != regs.saved {
            self.store.save(&regs.current).map(|()| {
                regs.saved = regs.current.clone();
            })
        } else {
            self.store.try_lock()
        };
        match result {
            Ok(()) => {
                if std::mem::take(&mut regs.degraded) {
                    tracing::info!(path = %self.store.path().display(), "key registry saved and locked again; no longer degraded");
                }
                None
            }
            Err(e) => {
                let e = Arc::new(e);
                let reason = if regs.saved.is_empty() {
                    RegistryFault::InMemoryOnly(e.clone())
                } else if regs.current != regs.saved {
                    RegistryFault::PromotionsWait(e.clone())
                } else {
                    RegistryFault::CannotLock(e.clone())
                };
                tracing::warn!(error = %e, "{reason}");
                regs.degraded = true;
                Some(reason)
            }
        }
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

fn log_changes(changes: &[Change], reg: &crate::keys::Registry, unsaved: bool) {
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
            Change::Promoted { from, to } if unsaved => {
                tracing::warn!(from = ?from, to, "Transit key version is ready for promotion, held back until the key registry can be saved")
            }
            Change::Promoted { from, to } => {
                let key_id = reg.records.get(to).map(|r| r.key_id.as_str()).unwrap_or("");
                tracing::info!(from = ?from, to, key_id, "promoted Transit key version: Status and Encrypt now use it")
            }
        }
    }
}
