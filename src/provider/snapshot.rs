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
    /// Conditions that do not stop serving but must be seen (e.g. min_decryption_version).
    pub warnings: Vec<String>,
}

impl Snapshot {
    /// `Ok` when Status may say `ok`; otherwise a one-line reason (a problem, else a warning).
    pub fn health(&self, max_staleness: Duration) -> Result<(), String> {
        if let Some(p) = self.problem(max_staleness) {
            return Err(p);
        }
        if let Some(w) = self.warnings.first() {
            return Err(w.clone());
        }
        Ok(())
    }

    /// What stops the provider from serving, ignoring warnings (degraded but serving).
    pub fn problem(&self, max_staleness: Duration) -> Option<String> {
        self.serving_check(max_staleness).err()
    }

    fn serving_check(&self, max_staleness: Duration) -> Result<(), String> {
        if self.active.is_none() {
            return Err(match &self.problem {
                Some(p) => format!("no active key yet: {p}"),
                None => "no active key yet: waiting for the first key metadata probe".into(),
            });
        }
        if let Some(p) = &self.problem {
            return Err(p.clone());
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

    pub fn age(&self) -> Option<Duration> {
        self.metadata_ok_at.map(|t| t.elapsed())
    }
}
