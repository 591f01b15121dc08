//! The PKCS#11 module, one per process, and the threads that talk to it. Every cryptoki call
//! runs on these threads (never on a tokio worker); callers wait on a reply channel with a
//! deadline, so a hung `C_Sign` costs a timeout, not a stuck provider.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use secrecy::ExposeSecret;

use super::error::{ck, hex, token_err};
use super::Pkcs11Error;
use crate::config::Pkcs11KeyRef;

/// Sessions (one per worker thread) serving concurrent handshakes; more would only queue
/// inside the token, which serialises signing anyway.
const WORKERS: usize = 2;
/// Jobs waiting for a worker beyond this are refused at once ("busy"), not queued forever.
const QUEUE: usize = 16;
/// Loading and initialising the module; a module that hangs here fails the start instead.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The token the process uses. A PKCS#11 module can be initialised once per process, so the
/// first (module, token) stays for the life of the process; a reload naming another one is
/// refused as needing a restart.
static ACTIVE: Mutex<Option<Arc<Token>>> = Mutex::new(None);

/// The token for `module`/`label`, loading the module on first use.
pub(crate) fn token(module: &Path, label: &str, pin: AuthPin) -> Result<Arc<Token>, Pkcs11Error> {
    let mut active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = active.as_ref() {
        if t.shared.module != module {
            return Err(Pkcs11Error::RestartNeeded {
                field: "auth.cert.module_path",
                running: t.shared.module.display().to_string(),
            });
        }
        if t.shared.token_label != label {
            return Err(Pkcs11Error::RestartNeeded {
                field: "auth.cert.token_label",
                running: t.shared.token_label.clone(),
            });
        }
        return Ok(t.clone());
    }
    let t = Arc::new(Token::open(module, label, pin)?);
    *active = Some(t.clone());
    Ok(t)
}

struct Shared {
    ctx: Pkcs11,
    module: PathBuf,
    token_label: String,
    pin: Mutex<AuthPin>,
    /// The token refused this PIN: it is not tried again until a reload brings one, since
    /// every try counts against the token's retry limit (a locked PIN needs the SO).
    pin_rejected: AtomicBool,
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

pub(crate) struct Token {
    shared: Arc<Shared>,
    jobs: SyncSender<(Instant, Job)>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.shared.module)
            .field("token_label", &self.shared.token_label)
            .finish_non_exhaustive()
    }
}

impl Token {
    fn open(module: &Path, label: &str, pin: AuthPin) -> Result<Self, Pkcs11Error> {
        let module_err = |reason: String| Pkcs11Error::Module {
            path: module.to_path_buf(),
            reason,
        };
        if !module.is_file() {
            return Err(module_err("no such file".into()));
        }
        // Loading runs module code (C_Initialize) too: on its own thread, with a deadline.
        let (tx, rx) = mpsc::sync_channel(1);
        let path = module.to_path_buf();
        std::thread::Builder::new()
            .name("pkcs11-load".into())
            .spawn(move || {
                let loaded = Pkcs11::new(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|ctx| {
                        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                            .map_err(|e| format!("C_Initialize: {}", ck(&e)))
                            .map(|()| ctx)
                    });
                let _ = tx.send(loaded);
            })
            .map_err(|e| module_err(format!("cannot start a thread to load it: {e}")))?;
        let ctx = match rx.recv_timeout(LOAD_TIMEOUT) {
            Ok(loaded) => loaded.map_err(module_err)?,
            Err(_) => {
                return Err(module_err(format!(
                    "did not finish loading within {LOAD_TIMEOUT:?}"
                )))
            }
        };
        let shared = Arc::new(Shared {
            ctx,
            module: module.to_path_buf(),
            token_label: label.to_owned(),
            pin: Mutex::new(pin),
            pin_rejected: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::sync_channel::<(Instant, Job)>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WORKERS {
            let (shared, rx) = (shared.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("pkcs11-{i}"))
                .spawn(move || worker_loop(shared, rx))
                .map_err(|e| module_err(format!("cannot start a worker thread: {e}")))?;
        }
        Ok(Self { shared, jobs: tx })
    }

    pub(crate) fn label(&self) -> &str {
        &self.shared.token_label
    }

    /// The module's own description, for `doctor`.
    pub(crate) fn library_description(&self) -> String {
        match self.shared.ctx.get_library_info() {
            Ok(i) => format!(
                "{} {} ({})",
                i.library_description().trim(),
                i.library_version(),
                i.manufacturer_id().trim()
            ),
            Err(e) => ck(&e),
        }
    }

    /// Runs `f` on a worker and waits at most `budget` for its answer.
    pub(crate) fn run<T, F>(&self, budget: Duration, f: F) -> Result<T, Pkcs11Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Worker) -> Result<T, Pkcs11Error> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let deadline = Instant::now() + budget;
        let job: Job = Box::new(move |w| {
            let _ = tx.send(f(w));
        });
        match self.jobs.try_send((deadline, job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Pkcs11Error::Busy {
                    token: self.label().to_owned(),
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Pkcs11Error::WorkerGone {
                    token: self.label().to_owned(),
                })
            }
        }
        let wait = || rx.recv_timeout(budget);
        // On the daemon's multi-thread runtime, give this tokio worker's other tasks to
        // another thread while we wait, so Status and the watchdog keep answering.
        let answer = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        match answer {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(Pkcs11Error::Timeout {
                token: self.label().to_owned(),
                after: budget,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(Pkcs11Error::WorkerGone {
                token: self.label().to_owned(),
            }),
        }
    }

    /// SIGHUP: a changed PIN (or any PIN after one was rejected) is tried on the token; if it
    /// fails the old login stays.
    pub(crate) fn set_pin(&self, pin: AuthPin, budget: Duration) -> Result<(), Pkcs11Error> {
        let same = {
            let current = self.shared.pin.lock().unwrap_or_else(|p| p.into_inner());
            current.expose_secret() == pin.expose_secret()
        };
        if same && !self.shared.pin_rejected.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.run(budget, move |w| w.relogin(pin))
    }
}

fn worker_loop(shared: Arc<Shared>, rx: Arc<Mutex<Receiver<(Instant, Job)>>>) {
    let mut worker = Worker {
        shared,
        session: None,
    };
    loop {
        let next = {
            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
            guard.recv()
        };
        let Ok((deadline, job)) = next else { return };
        // The caller gave up already: do not spend the token's time on it.
        if Instant::now() >= deadline {
            continue;
        }
        job(&mut worker);
    }
}

/// What a worker keeps between jobs: its session (reopened after a token error).
pub(crate) struct Worker {
    shared: Arc<Shared>,
    session: Option<Session>,
}

/// Attributes of the private key, for the signer and the doctor.
#[derive(Debug, Clone)]
pub(crate) struct KeyInfo {
    pub(crate) kind: KeyKind,
    /// What the token can do (C_GetMechanismList of its slot).
    pub(crate) mechanisms: Vec<MechanismType>,
    pub(crate) sensitive: bool,
    pub(crate) extractable: bool,
    pub(crate) always_sensitive: bool,
    pub(crate) never_extractable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    EcP256,
    Rsa { bits: usize },
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EcP256 => f.write_str("ECDSA P-256"),
            Self::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// DER of the P-256 OID (prime256v1), as CKA_EC_PARAMS holds it.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

impl Worker {
    fn token_label(&self) -> String {
        self.shared.token_label.clone()
    }

    fn session(&mut self) -> Result<&Session, Pkcs11Error> {
        if self.session.is_none() {
            let session = self.open_session()?;
            self.session = Some(session);
        }
        self.session
            .as_ref()
            .ok_or_else(|| Pkcs11Error::WorkerGone {
                token: self.token_label(),
            })
    }

    fn open_session(&self) -> Result<Session, Pkcs11Error> {
        let session = self.open_session_unauthenticated()?;
        let label = &self.shared.token_label;
        if self.shared.pin_rejected.load(Ordering::SeqCst) {
            return Err(Pkcs11Error::Login {
                token: label.clone(),
                reason: "the PIN was rejected before and is not tried again until a reload \
                         (SIGHUP) brings a new one, so the token's retry counter is kept"
                    .into(),
                pin_rejected: true,
            });
        }
        let pin = self.shared.pin.lock().unwrap_or_else(|p| p.into_inner());
        let result = login(&session, &pin, label);
        if matches!(
            result,
            Err(Pkcs11Error::Login {
                pin_rejected: true,
                ..
            })
        ) {
            self.shared.pin_rejected.store(true, Ordering::SeqCst);
        }
        result.map(|()| session)
    }

    fn open_session_unauthenticated(&self) -> Result<Session, Pkcs11Error> {
        let ctx = &self.shared.ctx;
        let label = &self.shared.token_label;
        let op = |op: &'static str| move |e: CkError| token_err(label, op, &e);
        let slots = ctx.get_slots_with_token().map_err(op("C_GetSlotList"))?;
        let mut present = Vec::new();
        let mut found = None;
        let mut broken = None;
        for slot in slots {
            // A slot whose token went away may fail here; look at the others.
            let info = match ctx.get_token_info(slot) {
                Ok(info) => info,
                Err(e) => {
                    broken = Some(token_err(label, "C_GetTokenInfo", &e));
                    continue;
                }
            };
            let l = info.label().trim_end().to_owned();
            if &l == label {
                found = Some(slot);
                break;
            }
            present.push(l);
        }
        if let (None, Some(e)) = (found, broken) {
            return Err(e);
        }
        let slot = found.ok_or_else(|| Pkcs11Error::TokenNotFound {
            label: label.clone(),
            module: self.shared.module.display().to_string(),
            present: if present.is_empty() {
                "none".into()
            } else {
                format!("{present:?}")
            },
        })?;
        ctx.open_ro_session(slot).map_err(op("C_OpenSession"))
    }

    /// Logs out and in with `pin`; on failure logs in with the previous PIN again, unless
    /// that one had been rejected too (one try per reload, never a loop).
    fn relogin(&mut self, pin: AuthPin) -> Result<(), Pkcs11Error> {
        let label = self.token_label();
        let shared = self.shared.clone();
        if self.session.is_none() {
            self.session = Some(self.open_session_unauthenticated()?);
        }
        let Some(session) = self.session.as_ref() else {
            return Err(Pkcs11Error::WorkerGone { token: label });
        };
        let _ = session.logout();
        let old_was_rejected = shared.pin_rejected.load(Ordering::SeqCst);
        let result = login(session, &pin, &label);
        let mut current = shared.pin.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                *current = pin;
                shared.pin_rejected.store(false, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                if old_was_rejected || login(session, &current, &label).is_err() {
                    drop(current);
                    self.session = None;
                }
                Err(e)
            }
        }
    }

    fn find_key(&mut self, key: &Pkcs11KeyRef) -> Result<ObjectHandle, Pkcs11Error> {
        let label = self.token_label();
        let (field, what, attr) = match key {
            Pkcs11KeyRef::Label(l) => (
                "auth.cert.key_label",
                format!("labelled {l:?}"),
                Attribute::Label(l.as_bytes().to_vec()),
            ),
            Pkcs11KeyRef::Id(id) => (
                "auth.cert.key_object_id",
                format!("with CKA_ID {}", hex(id)),
                Attribute::Id(id.clone()),
            ),
        };
        let found = self
            .session()?
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), attr])
            .map_err(|e| token_err(&label, "C_FindObjects", &e))?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(Pkcs11Error::KeyNotFound {
                field,
                what,
                token: label,
            }),
            many => Err(Pkcs11Error::KeyAmbiguous {
                field,
                what,
                count: many.len(),
                token: label,
            }),
        }
    }

    /// Finds the key and reads the attributes the signer and the doctor need.
    pub(crate) fn key_info(&mut self, key: &Pkcs11KeyRef) -> Result<KeyInfo, Pkcs11Error> {
        self.retrying(|w| {
            let handle = w.find_key(key)?;
            let label = w.token_label();
            let attrs = w
                .session()?
                .get_attributes(
                    handle,
                    &[
                        AttributeType::KeyType,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::AlwaysSensitive,
                        AttributeType::NeverExtractable,
                        AttributeType::EcParams,
                        AttributeType::Modulus,
                    ],
                )
                .map_err(|e| token_err(&label, "C_GetAttributeValue", &e))?;
            let session = w.session()?;
            let slot = session
                .get_session_info()
                .map_err(|e| token_err(&label, "C_GetSessionInfo", &e))?
                .slot_id();
            let mechanisms = w
                .shared
                .ctx
                .get_mechanism_list(slot)
                .map_err(|e| token_err(&label, "C_GetMechanismList", &e))?;
            let mut info = KeyInfo {
                kind: KeyKind::EcP256,
                mechanisms,
                sensitive: false,
                extractable: true,
                always_sensitive: false,
                never_extractable: false,
            };
            let (mut key_type, mut ec_params, mut modulus) = (None, None, None);
            for a in attrs {
                match a {
                    Attribute::KeyType(t) => key_type = Some(t),
                    Attribute::Sensitive(b) => info.sensitive = b,
                    Attribute::Extractable(b) => info.extractable = b,
                    Attribute::AlwaysSensitive(b) => info.always_sensitive = b,
                    Attribute::NeverExtractable(b) => info.never_extractable = b,
                    Attribute::EcParams(p) => ec_params = Some(p),
                    Attribute::Modulus(m) => modulus = Some(m),
                    _ => {}
                }
            }
            info.kind = match key_type {
                Some(t) if t == KeyType::EC => match ec_params {
                    Some(p) if p == P256_PARAMS => KeyKind::EcP256,
                    _ => {
                        return Err(Pkcs11Error::UnsupportedKey {
                            reason: "an EC key on a curve other than P-256".into(),
                        })
                    }
                },
                Some(t) if t == KeyType::RSA => {
                    let m = modulus.unwrap_or_default();
                    let bits = m.iter().skip_while(|b| **b == 0).count() * 8;
                    if bits < 2048 {
                        return Err(Pkcs11Error::UnsupportedKey {
                            reason: format!("an RSA key of {bits} bits (at least 2048 needed)"),
                        });
                    }
                    KeyKind::Rsa { bits }
                }
                other => {
                    return Err(Pkcs11Error::UnsupportedKey {
                        reason: format!("key type {other:?} (only EC P-256 and RSA are supported)"),
                    })
                }
            };
            Ok(info)
        })
    }

    /// One signing call; `data` is already hashed (and DigestInfo-wrapped for PKCS#1 v1.5).
    pub(crate) fn sign(
        &mut self,
        key: &Pkcs11KeyRef,
        mechanism: &Mechanism<'_>,
        data: &[u8],
    ) -> Result<Vec<u8>, Pkcs11Error> {
        self.retrying(|w| {
            let handle = w.find_key(key)?;
            let label = w.token_label();
            w.session()?
                .sign(mechanism, handle, data)
                .map_err(|e| token_err(&label, "C_Sign", &e))
        })
    }

    /// Runs `f`; when the session went bad (token removed and re-inserted, logged out, closed),
    /// drops it and tries once more with a fresh session.
    fn retrying<T>(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<T, Pkcs11Error>,
    ) -> Result<T, Pkcs11Error> {
        match f(self) {
            Err(e) if e.session_lost() => {
                tracing::info!(error = %e, "PKCS#11 session lost; opening a new one");
                self.session = None;
                f(self)
            }
            other => other,
        }
    }
}

fn login(session: &Session, pin: &AuthPin, token: &str) -> Result<(), Pkcs11Error> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(Pkcs11Error::Login {
            token: token.to_owned(),
            reason: ck(&e),
            pin_rejected: matches!(
                e,
                CkError::Pkcs11(
                    RvError::PinIncorrect
                        | RvError::PinLocked
                        | RvError::PinInvalid
                        | RvError::PinLenRange
                        | RvError::PinExpired,
                    _
                )
            ),
        }),
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
