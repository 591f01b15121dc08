//! The in-memory state Status is served from; replaced whole by the probe loop.
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A version this provider can decrypt, looked up by key_id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownKey {
    pub version: u32,
    pub state: crate::keys::KeyState,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// (Transit version, key_id) that Status reports and Encrypt uses.
    pub active: Option<(u32, String)>,
    pub known: HashMap<String, KnownKey>,
    /// Last successful key metadata probe.
    pub metadata_ok_at: Option<Instant>,
    /// Last successful encrypt+decrypt probe.
    pub deep_ok_at: Option<Instant>,
    /// Why the last probe failed or what the registry refused; `None` when all is well.
    pub problem: Option<String>,
    /// Conditions that do not stop serving but must be seen (e.g. min_decryption_version):
    /// reported in metrics, logs and `doctor`, never in Status healthz.
    pub warnings: Vec<String>,
    /// Consecutive failed probes; Status turns not ok at `status.unhealthy_after`.
    pub failures: u32,
}

impl Snapshot {
    /// `Ok` when Status may say `ok`; otherwise a one-line reason. A failing probe counts only
    /// from `unhealthy_after` consecutive failures on, so one blip does not turn every API
    /// server's KMS health not ok at the same moment; stale metadata always does.
    pub fn health(&self, max_staleness: Duration, unhealthy_after: u32) -> Result<(), String> {
        if self.active.is_none() {
            return Err(match &self.problem {
                Some(p) => format!("no active key yet: {p}"),
                None => "no active key yet: waiting for the first key metadata probe".into(),
            });
        }
        if self.metadata_ok_at.is_none() {
            // Serving the saved key_id from the key registry after a restart.
            return Err(format!(
                "waiting for OpenBao: {}",
                self.problem
                    .as_deref()
                    .unwrap_or("the first key metadata probe has not finished")
            ));
        }
        if let Some(p) = &self.problem {
            if self.failures >= unhealthy_after {
                return Err(p.clone());
            }
        }
        match self.metadata_ok_at {
            Some(t) if t.elapsed() <= max_staleness => {}
            Some(t) => {
                return Err(format!(
                    "key metadata is stale ({}s old)",
                    t.elapsed().as_secs()
                ))
            }
            None => return Err("no key metadata yet".into()),
        }
        if self.deep_ok_at.is_none() {
            return Err("waiting for the first encrypt/decrypt probe".into());
        }
        Ok(())
    }

    /// The key_id Status reports and Encrypt uses, once a version is active.
    pub fn key_id(&self) -> Option<&str> {
        self.active.as_ref().map(|(_, id)| id.as_str())
    }

    /// Status is served from the saved key registry, no probe has succeeded yet.
    pub fn waiting_for_openbao(&self) -> bool {
        self.active.is_some() && self.metadata_ok_at.is_none()
    }

    pub fn age(&self) -> Option<Duration> {
        self.metadata_ok_at.map(|t| t.elapsed())
    }
}
