//! The in-memory state Status is served from; replaced whole by the probe loop.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::{Health, KeyWarning, NotOk, ProbeError, RegistryFault};

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
    pub(crate) warnings: Vec<KeyWarning>,
    /// Why the key registry cannot be saved on this host (full or read-only state directory);
    /// Status names it while serving goes on.
    pub(crate) registry_fault: Option<RegistryFault>,
    /// Consecutive failed probes; Status turns not ok at `status.unhealthy_after`.
    pub(crate) failures: u32,
}

impl Snapshot {
    /// What Status, `/readyz` and READY=1 make of this snapshot. A failure or stale metadata
    /// outranks warnings, so a warning never hides that the provider cannot serve.
    /// A failing probe counts only from `unhealthy_after` consecutive failures on, so one blip
    /// does not turn every API server's KMS health not ok at the same moment.
    pub(crate) fn health(&self, max_staleness: Duration, unhealthy_after: u32) -> Health {
        if self.active.is_none() {
            return Health::NotOk(NotOk::NoActiveKey(self.problem.clone()));
        }
        if self.metadata_ok_at.is_none() {
            // Serving the saved key_id from the key registry after a restart.
            return Health::NotOk(NotOk::WaitingForOpenBao(self.problem.clone()));
        }
        if let Some(p) = &self.problem {
            if self.failures >= unhealthy_after {
                return Health::NotOk(NotOk::Probe(p.clone()));
            }
        }
        match self.metadata_ok_at {
            Some(t) if t.elapsed() <= max_staleness => {}
            Some(t) => return Health::NotOk(NotOk::Stale(t.elapsed())),
            None => return Health::NotOk(NotOk::NoMetadata),
        }
        if self.deep_ok_at.is_none() {
            return Health::NotOk(NotOk::WaitingForDeepProbe);
        }
        if let Some(fault) = &self.registry_fault {
            Health::Impaired(fault.clone())
        } else if self.warnings.is_empty() {
            Health::Ok
        } else {
            Health::Degraded(self.warnings.clone())
        }
    }

    /// The key_id Status reports and Encrypt uses, once a version is active.
    pub(crate) fn key_id(&self) -> Option<&str> {
        self.active.as_ref().map(|(_, id)| id.as_str())
    }

    /// The key_id Status reports. Withheld (empty) once `unhealthy_after` consecutive probes
    /// found the key gone or denied: kube-apiserver extends its write DEK on every Status with
    /// an unchanged, valid key_id, so only an empty one stops writes (within its 3-minute DEK
    /// lifetime), as a key disabled on purpose should. An unreachable, sealed or slow OpenBao
    /// never withholds it, so writes go on through an outage (docs/reliability.md).
    pub(crate) fn status_key_id(&self, unhealthy_after: u32) -> &str {
        match &self.problem {
            Some(p) if self.failures >= unhealthy_after && p.key_withdrawn() => "",
            _ => self.key_id().unwrap_or_default(),
        }
    }

    /// Status is served from the saved key registry, no probe has succeeded yet.
    pub(crate) fn waiting_for_openbao(&self) -> bool {
        self.active.is_some() && self.metadata_ok_at.is_none()
    }

    pub(crate) fn age(&self) -> Option<Duration> {
        self.metadata_ok_at.map(|t| t.elapsed())
    }
}
