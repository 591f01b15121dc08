//! The key registry on disk. It is part of the storage contract (it maps every key_id ever
//! written to etcd to a Transit version), so it is written atomically, locked against a second
//! writer, and checked on load: a truncated, edited or rolled-back file is reported, never replaced.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::registry::Registry;

pub(crate) const REGISTRY_FILE: &str = "key-registry.json";
const WITNESS_FILE: &str = "key-registry.generation";
const LOCK_FILE: &str = "key-registry.lock";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("state directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key registry {} is locked by another process ({holder}); only one provider may use a state_dir", path.display())]
    Locked { path: PathBuf, holder: String },
    #[error("key registry {} is damaged ({reason}); it was left untouched for inspection — restore it from backup", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("key registry {} was rolled back: it holds generation {found} but generation {expected} was written last; restore the newest copy", path.display())]
    RolledBack {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("key registry {} is missing but generation {expected} was written before; restore it from backup (it maps stored key_ids to Transit versions)", path.display())]
    Missing { path: PathBuf, expected: u64 },
    #[error("key registry {} belongs to another key scope (config changed provider_name, cluster, instance, mount or key); refusing to mix them", path.display())]
    ScopeMismatch { path: PathBuf },
}

/// The file: the body fields plus `sha256` over the body's canonical JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRegistry {
    format: u32,
    generation: u64,
    scope: String,
    registry: Registry,
    sha256: String,
}

impl StoreError {
    /// Damage that a restart cannot fix (as opposed to I/O trouble or a lock held by a peer).
    pub(crate) fn needs_operator(&self) -> bool {
        matches!(
            self,
            Self::Damaged { .. }
                | Self::RolledBack { .. }
                | Self::Missing { .. }
                | Self::ScopeMismatch { .. }
        )
    }
}

#[derive(Serialize)]
struct BodyRef {
    format: u32,
    generation: u64,
    scope: String,
    registry: Registry,
}

/// Result of `verify`, for `state verify`.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) generation: u64,
    pub(crate) registry: Registry,
}

pub(crate) struct Store {
    dir: PathBuf,
    scope: String,
    generation: std::sync::atomic::AtomicU64,
    /// The exclusive lock on `key-registry.lock`; `save` never writes without it.
    lock: std::sync::Mutex<Option<Flock<File>>>,
    /// Whether this store may take the lock later (serve) or is read-only for good (CLI).
    may_lock: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// For `serve`: takes the lock when the directory allows it. A directory that cannot be
    /// written (read-only, full, missing and not creatable) gives an unlocked store and the
    /// reason, so the provider serves from the verified registry, degraded, and `save` takes
    /// the lock once the directory is writable again. A lock held by another process is an
    /// error: two providers must never share a state_dir.
    pub(crate) fn open_for_serving(
        dir: &Path,
        scope: &str,
    ) -> Result<(Self, Option<StoreError>), StoreError> {
        let store = Self::unlocked(dir, scope, true);
        match store.try_lock() {
            Ok(()) => Ok((store, None)),
            Err(e @ StoreError::Io { .. }) => Ok((store, Some(e))),
            Err(e) => Err(e),
        }
    }

    /// Read-only access without the lock (`state show` / `state verify` next to a running service).
    pub(crate) fn open_readonly(dir: &Path, scope: &str) -> Self {
        Self::unlocked(dir, scope, false)
    }

    fn unlocked(dir: &Path, scope: &str, may_lock: bool) -> Self {
        Self {
            dir: dir.to_path_buf(),
            scope: scope.to_owned(),
            generation: std::sync::atomic::AtomicU64::new(0),
            lock: std::sync::Mutex::new(None),
            may_lock,
        }
    }

    /// Takes the exclusive lock unless it is already held.
    pub(crate) fn try_lock(&self) -> Result<(), StoreError> {
        let mut held = self
            .lock
            .lock()
            .map_err(|_| io(&self.dir)(std::io::Error::other("registry lock poisoned")))?;
        if held.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let Ok(mut lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "unknown pid".to_owned(),
                pid => format!("pid {pid}"),
            };
            return Err(StoreError::Locked {
                path: self.dir.join(REGISTRY_FILE),
                holder,
            });
        };
        // The pid is for people; on a full disk the lock is held without it.
        let _ = lock
            .set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()));
        *held = Some(lock);
        Ok(())
    }

    /// The state directory, where the trim record lives beside the registry.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(REGISTRY_FILE)
    }

    /// Loads and checks the registry; an absent file (first start) is an empty registry.
    pub(crate) fn load(&self) -> Result<Registry, StoreError> {
        let v = self.verify()?;
        self.generation
            .store(v.generation, std::sync::atomic::Ordering::SeqCst);
        Ok(v.registry)
    }

    pub(crate) fn verify(&self) -> Result<Verified, StoreError> {
        let path = self.path();
        let witness = self.read_witness()?;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match witness {
                    Some(expected) if expected > 0 => Err(StoreError::Missing { path, expected }),
                    _ => Ok(Verified {
                        generation: 0,
                        registry: Registry::default(),
                    }),
                };
            }
            Err(e) => return Err(io(&path)(e)),
        };
        self.check(&text, witness)
    }

    /// The integrity check of a registry file's bytes against the scope and the generation
    /// witness: pure, so it can be fuzzed.
    pub(crate) fn check(&self, text: &[u8], witness: Option<u64>) -> Result<Verified, StoreError> {
        let path = self.path();
        let damaged = |reason: String| StoreError::Damaged {
            path: path.clone(),
            reason,
        };
        let env: StoredRegistry = serde_json::from_slice(text)
            .map_err(|e| damaged(format!("not a valid registry file (truncated?): {e}")))?;
        if env.format != FORMAT {
            return Err(damaged(format!(
                "format {} is not the supported format {FORMAT}",
                env.format
            )));
        }
        let body = BodyRef {
            format: env.format,
            generation: env.generation,
            scope: env.scope,
            registry: env.registry,
        };
        if hash(&body)? != env.sha256 {
            return Err(damaged(
                "content hash does not match: the file was edited or partly written".into(),
            ));
        }
        if body.scope != self.scope {
            return Err(StoreError::ScopeMismatch { path });
        }
        if let Some(expected) = witness {
            if body.generation < expected {
                return Err(StoreError::RolledBack {
                    path,
                    found: body.generation,
                    expected,
                });
            }
        }
        Ok(Verified {
            generation: body.generation,
            registry: body.registry,
        })
    }

    /// Writes a new generation: temp file, fsync, rename, fsync dir; then the generation witness.
    /// Never writes without the lock: an unlocked store takes it first (or fails).
    pub(crate) fn save(&self, registry: &Registry) -> Result<(), StoreError> {
        if !self.may_lock {
            return Err(io(&self.dir)(std::io::Error::other(
                "opened read-only; not saving",
            )));
        }
        self.try_lock()?;
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst) + 1;
        let body = BodyRef {
            format: FORMAT,
            generation,
            scope: self.scope.clone(),
            registry: registry.clone(),
        };
        let sha256 = hash(&body)?;
        let env = StoredRegistry {
            format: body.format,
            generation: body.generation,
            scope: body.scope,
            registry: body.registry,
            sha256,
        };
        let text = serde_json::to_vec_pretty(&env).map_err(|e| StoreError::Damaged {
            path: self.path(),
            reason: e.to_string(),
        })?;
        self.write_atomic(REGISTRY_FILE, &text)?;
        self.write_atomic(WITNESS_FILE, format!("{generation}\n").as_bytes())?;
        self.generation
            .store(generation, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn read_witness(&self) -> Result<Option<u64>, StoreError> {
        let path = self.dir.join(WITNESS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().parse().map(Some).map_err(|_| StoreError::Damaged {
                path,
                reason: "generation witness is not a number".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn write_atomic(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        super::atomic::write_atomic(&self.dir, name, data, None).map_err(|e| StoreError::Io {
            path: e.path,
            source: e.source,
        })
    }
}

#[cfg(feature = "fuzzing")]
impl Store {
    /// A registry file as `save` writes it (correct hash), for the fuzzer to get past the hash.
    pub(crate) fn seal_for_fuzzing(
        scope: &str,
        generation: u64,
        registry: &Registry,
    ) -> Option<Vec<u8>> {
        let body = BodyRef {
            format: FORMAT,
            generation,
            scope: scope.to_owned(),
            registry: registry.clone(),
        };
        let sha256 = hash(&body).ok()?;
        serde_json::to_vec(&StoredRegistry {
            format: body.format,
            generation: body.generation,
            scope: body.scope,
            registry: body.registry,
            sha256,
        })
        .ok()
    }
}

fn hash(body: &BodyRef) -> Result<String, StoreError> {
    let bytes = serde_json::to_vec(body).map_err(|e| StoreError::Damaged {
        path: PathBuf::new(),
        reason: e.to_string(),
    })?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
