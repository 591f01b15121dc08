//! The in-memory state Status is served from; replaced whole by the probe loop.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::{Health, NotOk, ProbeError};

/// A version this provider can decrypt, looked up by key_id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownKey {
    pub(crate) version: u32,
    pub(crate) state: crate::keys::KeyState,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// (Transit version, key_id) that Status reports and Encrypt uses.
    pub(crate) active: Option<(u32, String)>,
    pub(crate) known: HashMap<String, KnownKey>,
    /// Last successful key metadata probe.
    pub(crate) metadata_ok_at: Option<Instant>,
    /// Last successful encrypt+decrypt probe.
    pub(crate) deep_ok_at: Option<Instant>,
    /// Why the last probe failed or what the registry refused; `None` when all is well.
    pub(crate) problem: Option<Arc<ProbeError>>,
    /// Conditions that do not stop serving but must be seen (e.g. min_decryption_version).
    pub(crate) warnings: Vec<String>,
}

impl Snapshot {
    /// What Status, `/readyz` and READY=1 make of this snapshot. A failure or stale metadata
    /// outranks warnings, so a warning never hides that the provider cannot serve.
    pub(crate) fn health(&self, max_staleness: Duration) -> Health {
        if self.active.is_none() {
            return Health::NotOk(NotOk::NoActiveKey(self.problem.clone()));
        }
        if let Some(p) = &self.problem {
            return Health::NotOk(NotOk::Probe(p.clone()));
        }
        match self.metadata_ok_at {
            Some(t) if t.elapsed() <= max_staleness => {}
            Some(t) => return Health::NotOk(NotOk::Stale(t.elapsed())),
            None => return Health::NotOk(NotOk::NoMetadata),
        }
        if self.deep_ok_at.is_none() {
            return Health::NotOk(NotOk::WaitingForDeepProbe);
        }
        if self.warnings.is_empty() {
            Health::Ok
        } else {
            Health::Degraded(self.warnings.clone())
        }
    }

    /// The key_id Status reports and Encrypt uses, once a version is active.
    pub(crate) fn key_id(&self) -> Option<&str> {
        self.active.as_ref().map(|(_, id)| id.as_str())
    }

    pub(crate) fn age(&self) -> Option<Duration> {
        self.metadata_ok_at.map(|t| t.elapsed())
    }
}
