//! Which Transit versions this provider knows, and which one it writes with.
//!
//! A new version is first `pending` (it can already decrypt: another control-plane host may have
//! promoted it first), then `active` once it was seen in enough consecutive probes and an
//! activation delay has passed, so hosts never flip-flop. Versions are never forgotten.
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::id::KeyIdentity;

/// What one probe saw of the Transit key, in the registry's own terms (the provider translates
/// OpenBao's key metadata into this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observation {
    pub(crate) latest_version: u32,
    pub(crate) min_decryption_version: u32,
    /// Version -> creation time (unix seconds) of every version the key still holds.
    pub(crate) versions: BTreeMap<u32, i64>,
}

/// Why key metadata was read. Only the probe loop's schedule counts toward promotion, so a
/// client cannot hurry a rotation by asking for reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sighting {
    /// The probe loop, every `status.probe_interval`: one of `stable_observations`.
    Scheduled,
    /// A read a request asked for (a Decrypt with a key_id not seen yet): records new versions,
    /// so they decrypt, and counts for nothing.
    OnDemand,
}

/// When a pending version becomes active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Promotion {
    /// Consecutive probes that must see the version as the latest.
    pub(crate) stable_observations: NonZeroU32,
    /// Time since the version was first seen.
    pub(crate) activation_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyState {
    Pending,
    Active,
    Retired,
}

impl KeyState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Retired => "retired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyRecord {
    pub(crate) version: u32,
    pub(crate) created_unix: i64,
    pub(crate) key_id: String,
    pub(crate) state: KeyState,
    pub(crate) first_seen_unix: i64,
    /// Consecutive scheduled probes that saw this version as the latest (pending versions only).
    pub(crate) observations: u32,
}

/// What one observation changed; the caller logs these and persists when anything changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Adopted { active: u32, retired: Vec<u32> },
    Pending { version: u32 },
    Observed { version: u32, observations: u32 },
    Promoted { from: Option<u32>, to: u32 },
}

/// A Transit answer the registry refuses to adopt; health turns not-ok with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "Transit latest_version went backwards: registry knows v{known}, OpenBao says v{seen}"
    )]
    VersionWentBackwards { known: u32, seen: u32 },
    #[error("Transit key version v{version} changed its creation time ({known} -> {seen}): the key was re-created")]
    CreationTimeChanged { version: u32, known: i64, seen: i64 },
    #[error("Transit metadata lists no creation time for its latest version v{version}")]
    MissingLatest { version: u32 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registry {
    pub(crate) records: BTreeMap<u32, KeyRecord>,
}

impl Registry {
    pub(crate) fn active(&self) -> Option<&KeyRecord> {
        self.records.values().find(|r| r.state == KeyState::Active)
    }

    pub(crate) fn by_key_id(&self, key_id: &str) -> Option<&KeyRecord> {
        self.records.values().find(|r| r.key_id == key_id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Feeds one metadata read into the registry. On refusal nothing is changed.
    pub(crate) fn observe(
        &mut self,
        meta: &Observation,
        sighting: Sighting,
        identity: &KeyIdentity,
        rotation: &Promotion,
        now_unix: i64,
    ) -> Result<Vec<Change>, Refusal> {
        let latest = meta.latest_version;
        let latest_created = *meta
            .versions
            .get(&latest)
            .ok_or(Refusal::MissingLatest { version: latest })?;
        for (v, created) in &meta.versions {
            if let Some(rec) = self.records.get(v) {
                if rec.created_unix != *created {
                    return Err(Refusal::CreationTimeChanged {
                        version: *v,
                        known: rec.created_unix,
                        seen: *created,
                    });
                }
            }
        }
        let known_max = self.records.keys().next_back().copied().unwrap_or(0);
        if latest < known_max {
            return Err(Refusal::VersionWentBackwards {
                known: known_max,
                seen: latest,
            });
        }

        if self.records.is_empty() {
            return Ok(vec![self.adopt(meta, identity, now_unix)]);
        }

        let mut changes = Vec::new();
        // Versions between what we knew and the latest were never active anywhere we could see.
        for (v, created) in meta
            .versions
            .iter()
            .filter(|(v, _)| **v > known_max && **v < latest)
        {
            self.records.insert(
                *v,
                record(identity, *v, *created, KeyState::Retired, now_unix, 0),
            );
        }
        let active = self.active().map(|r| r.version);
        if active == Some(latest) {
            return Ok(changes);
        }
        let first_seen = !self.records.contains_key(&latest);
        let rec = self.records.entry(latest).or_insert_with(|| {
            record(
                identity,
                latest,
                latest_created,
                KeyState::Pending,
                now_unix,
                0,
            )
        });
        if first_seen {
            changes.push(Change::Pending { version: latest });
        }
        if sighting == Sighting::OnDemand {
            return Ok(changes);
        }
        rec.observations = rec.observations.saturating_add(1);
        let waited =
            Duration::from_secs(now_unix.saturating_sub(rec.first_seen_unix).max(0) as u64);
        if rec.observations >= rotation.stable_observations.get()
            && waited >= rotation.activation_delay
        {
            rec.state = KeyState::Active;
            rec.observations = 0;
            for other in self.records.values_mut() {
                if other.version != latest && other.state != KeyState::Retired {
                    other.state = KeyState::Retired;
                }
            }
            changes.push(Change::Promoted {
                from: active,
                to: latest,
            });
        } else {
            changes.push(Change::Observed {
                version: latest,
                observations: rec.observations,
            });
        }
        Ok(changes)
    }

    /// First start: every existing version becomes retired and the latest active at once, since
    /// there is no earlier key_id anyone could still be writing with.
    fn adopt(&mut self, meta: &Observation, identity: &KeyIdentity, now_unix: i64) -> Change {
        let latest = meta.latest_version;
        let mut retired = Vec::new();
        for (v, created) in &meta.versions {
            let state = if *v == latest {
                KeyState::Active
            } else {
                KeyState::Retired
            };
            if state == KeyState::Retired {
                retired.push(*v);
            }
            self.records
                .insert(*v, record(identity, *v, *created, state, now_unix, 0));
        }
        Change::Adopted {
            active: latest,
            retired,
        }
    }

    /// Retained versions that OpenBao's `min_decryption_version` no longer lets us decrypt.
    pub(crate) fn blocked_by_min_decryption(&self, meta: &Observation) -> Vec<u32> {
        self.records
            .keys()
            .copied()
            .filter(|v| *v < meta.min_decryption_version || !meta.versions.contains_key(v))
            .collect()
    }
}

fn record(
    identity: &KeyIdentity,
    version: u32,
    created: i64,
    state: KeyState,
    now: i64,
    observations: u32,
) -> KeyRecord {
    KeyRecord {
        version,
        created_unix: created,
        key_id: identity.key_id(version, created),
        state,
        first_seen_unix: now,
        observations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> KeyIdentity {
        KeyIdentity {
            provider_name: "p".into(),
            cluster_id: "c".into(),
            transit_mount_id: "m".into(),
            key_lineage_id: "l".into(),
            instance_id: "i".into(),
            namespace: String::new(),
            mount_path: "transit".into(),
            key_name: "k".into(),
        }
    }

    fn meta(latest: u32) -> Observation {
        Observation {
            latest_version: latest,
            min_decryption_version: 1,
            versions: (1..=latest).map(|v| (v, 1000 + v as i64)).collect(),
        }
    }

    impl Registry {
        fn observe_scheduled(
            &mut self,
            meta: &Observation,
            identity: &KeyIdentity,
            rotation: &Promotion,
            now_unix: i64,
        ) -> Result<Vec<Change>, Refusal> {
            self.observe(meta, Sighting::Scheduled, identity, rotation, now_unix)
        }
    }

    fn rotation(n: u32, delay: u64) -> Promotion {
        Promotion {
            stable_observations: NonZeroU32::new(n).unwrap(),
            activation_delay: Duration::from_secs(delay),
        }
    }

    #[test]
    fn first_start_adopts_existing_versions_with_latest_active() {
        let mut r = Registry::default();
        let changes = r
            .observe_scheduled(&meta(3), &identity(), &rotation(3, 120), 0)
            .unwrap();
        assert_eq!(
            changes,
            vec![Change::Adopted {
                active: 3,
                retired: vec![1, 2]
            }]
        );
        assert_eq!(r.active().unwrap().version, 3);
        assert_eq!(r.records[&1].state, KeyState::Retired);
    }

    #[test]
    fn rotation_waits_for_observations_and_delay_then_promotes() {
        let mut r = Registry::default();
        let rot = rotation(3, 120);
        r.observe_scheduled(&meta(1), &identity(), &rot, 0).unwrap();
        r.observe_scheduled(&meta(2), &identity(), &rot, 10)
            .unwrap();
        assert_eq!(r.records[&2].state, KeyState::Pending);
        r.observe_scheduled(&meta(2), &identity(), &rot, 20)
            .unwrap();
        r.observe_scheduled(&meta(2), &identity(), &rot, 30)
            .unwrap();
        assert_eq!(r.active().unwrap().version, 1, "delay not yet passed");
        let changes = r
            .observe_scheduled(&meta(2), &identity(), &rot, 131)
            .unwrap();
        assert_eq!(
            changes,
            vec![Change::Promoted {
                from: Some(1),
                to: 2
            }]
        );
        assert_eq!(r.records[&1].state, KeyState::Retired);
    }

    #[test]
    fn backwards_version_and_changed_creation_time_are_refused_without_change() {
        let mut r = Registry::default();
        r.observe_scheduled(&meta(3), &identity(), &rotation(1, 0), 0)
            .unwrap();
        let before = r.clone();
        assert_eq!(
            r.observe_scheduled(&meta(2), &identity(), &rotation(1, 0), 5),
            Err(Refusal::VersionWentBackwards { known: 3, seen: 2 })
        );
        let mut m = meta(3);
        m.versions.insert(2, 99);
        assert!(matches!(
            r.observe_scheduled(&m, &identity(), &rotation(1, 0), 5),
            Err(Refusal::CreationTimeChanged { version: 2, .. })
        ));
        assert_eq!(r, before);
    }

    #[test]
    fn skipped_versions_are_kept_as_retired() {
        let mut r = Registry::default();
        r.observe_scheduled(&meta(1), &identity(), &rotation(1, 0), 0)
            .unwrap();
        r.observe_scheduled(&meta(4), &identity(), &rotation(1, 0), 5)
            .unwrap();
        assert_eq!(r.active().unwrap().version, 4);
        assert!(r.records.len() == 4 && r.records[&2].state == KeyState::Retired);
    }

    #[test]
    fn on_demand_reads_record_a_new_version_but_never_count_toward_promotion() {
        let mut r = Registry::default();
        let rot = rotation(2, 0);
        r.observe_scheduled(&meta(1), &identity(), &rot, 0).unwrap();
        let first = r
            .observe(&meta(2), Sighting::OnDemand, &identity(), &rot, 1)
            .unwrap();
        assert_eq!(first, vec![Change::Pending { version: 2 }]);
        assert_eq!(
            r.records[&2].state,
            KeyState::Pending,
            "v2 decrypts already"
        );
        for t in 2..50 {
            let c = r
                .observe(&meta(2), Sighting::OnDemand, &identity(), &rot, t)
                .unwrap();
            assert!(c.is_empty(), "{c:?}");
        }
        assert_eq!(r.records[&2].observations, 0);
        assert_eq!(r.active().unwrap().version, 1);

        // The schedule alone decides: two scheduled probes, as if no read had come in between.
        assert_eq!(
            r.observe_scheduled(&meta(2), &identity(), &rot, 60)
                .unwrap(),
            vec![Change::Observed {
                version: 2,
                observations: 1
            }]
        );
        assert_eq!(
            r.observe_scheduled(&meta(2), &identity(), &rot, 90)
                .unwrap(),
            vec![Change::Promoted {
                from: Some(1),
                to: 2
            }]
        );
    }
}
