//! The trim record: "versions below N were trimmed on purpose, after a clean etcd scan". Without
//! it, a raised Transit `min_decryption_version` is a warning for good; with it, the probe and
//! `doctor` know the lower versions hold nothing this cluster still needs.
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::{write_atomic, WriteFailed};

#[derive(Debug, thiserror::Error)]
pub(crate) enum TrimError {
    #[error("trim record {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trim record {} is not a valid record: {source}", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("trim record {} belongs to another key scope; it was left untouched", path.display())]
    ScopeMismatch { path: PathBuf },
}

impl From<WriteFailed> for TrimError {
    fn from(e: WriteFailed) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// One etcd prefix as the scan before the trim found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScanSummary {
    pub(crate) prefix: String,
    /// The etcd revision the whole prefix was read at.
    pub(crate) revision: i64,
    pub(crate) values: u64,
}

/// Versions below `min_decryption_version` were trimmed deliberately in this key scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrimRecord {
    pub(crate) min_decryption_version: u32,
    pub(crate) recorded_unix: i64,
    /// `KeyIdentity::fingerprint()`: a record never speaks for another key.
    pub(crate) scope: String,
    pub(crate) scans: Vec<ScanSummary>,
}

impl TrimRecord {
    /// Whether the record speaks for this `min_decryption_version`: a later, higher trim
    /// was not scanned for and is not covered.
    pub(crate) fn covers(&self, min_decryption_version: u32) -> bool {
        min_decryption_version <= self.min_decryption_version
    }

    /// When it was recorded, as RFC 3339 (seconds).
    pub(crate) fn recorded(&self) -> String {
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(self.recorded_unix.max(0) as u64);
        humantime::format_rfc3339_seconds(at).to_string()
    }
}

/// The record's file for a scope: one per scope, beside the key registry.
pub(crate) fn path(dir: &Path, scope: &str) -> PathBuf {
    dir.join(file_name(scope))
}

fn file_name(scope: &str) -> String {
    format!("trim-{scope}.json")
}

/// The record of `scope` under `dir`; `None` when there is none.
pub(crate) fn load(dir: &Path, scope: &str) -> Result<Option<TrimRecord>, TrimError> {
    let path = path(dir, scope);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TrimError::Io { path, source }),
    };
    let record: TrimRecord =
        serde_json::from_slice(&text).map_err(|source| TrimError::Malformed {
            path: path.clone(),
            source,
        })?;
    if record.scope != scope {
        return Err(TrimError::ScopeMismatch { path });
    }
    Ok(Some(record))
}

/// Writes the record atomically, mode 0600, owned like `dir`: the CLI runs as root, the
/// service as its own user, which must be able to read it.
pub(crate) fn save(dir: &Path, record: &TrimRecord) -> Result<PathBuf, TrimError> {
    let path = path(dir, &record.scope);
    let io = |source| TrimError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(dir).map_err(io)?;
    let text = serde_json::to_vec_pretty(record).map_err(|source| TrimError::Malformed {
        path: path.clone(),
        source,
    })?;
    write_atomic(
        dir,
        &file_name(&record.scope),
        &text,
        Some((meta.uid(), meta.gid())),
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn record(scope: &str) -> TrimRecord {
        TrimRecord {
            min_decryption_version: 3,
            recorded_unix: 1_700_000_000,
            scope: scope.into(),
            scans: vec![ScanSummary {
                prefix: "/registry/secrets/".into(),
                revision: 42,
                values: 7,
            }],
        }
    }

    #[test]
    fn a_saved_record_loads_back_with_mode_0600_and_the_directory_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = save(dir.path(), &record("scope-a")).expect("save");
        assert_eq!(written, dir.path().join("trim-scope-a.json"));
        assert_eq!(
            load(dir.path(), "scope-a").expect("load"),
            Some(record("scope-a"))
        );
        let meta = std::fs::metadata(&written).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dir_meta = std::fs::metadata(dir.path()).expect("dir meta");
        assert_eq!((meta.uid(), meta.gid()), (dir_meta.uid(), dir_meta.gid()));
        assert_eq!(record("s").recorded(), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn no_file_is_no_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path(), "scope-a").expect("load"), None);
    }

    #[test]
    fn a_record_of_another_scope_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = serde_json::to_vec(&record("scope-b")).expect("json");
        std::fs::write(dir.path().join("trim-scope-a.json"), text).expect("write");
        let err = load(dir.path(), "scope-a").expect_err("another scope");
        assert!(matches!(err, TrimError::ScopeMismatch { .. }), "{err}");
    }

    #[test]
    fn a_malformed_or_extended_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("trim-scope-a.json");
        for text in [
            "{\"min_decryption_version\": 3".to_owned(),
            serde_json::to_string(&record("scope-a"))
                .expect("json")
                .replacen('{', "{\"extra\":1,", 1),
        ] {
            std::fs::write(&file, text).expect("write");
            let err = load(dir.path(), "scope-a").expect_err("malformed");
            assert!(matches!(err, TrimError::Malformed { .. }), "{err}");
            assert!(
                err.to_string().contains(&file.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn a_record_covers_its_version_and_below_only() {
        let r = record("s");
        assert!(r.covers(2) && r.covers(3));
        assert!(!r.covers(4));
    }
}
