//! Token failures, each naming the config field an operator would change, and the short
//! CKR_ names used in them.
use std::path::PathBuf;
use std::time::Duration;

use cryptoki::error::{Error as CkError, RvError};

/// What went wrong with the token, naming the config field an operator would change.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Pkcs11Error {
    #[error("auth.cert.module_path {}: cannot load the PKCS#11 module: {reason}", path.display())]
    Module { path: PathBuf, reason: String },
    #[error("auth.cert.token_label: no token labelled {label:?} in {module} (tokens present: {present})")]
    TokenNotFound {
        label: String,
        module: String,
        present: String,
    },
    #[error("auth.cert.pin_file {}: {reason}", path.display())]
    Pin { path: PathBuf, reason: String },
    #[error("auth.cert.pin_file: login to PKCS#11 token {token:?} failed: {reason}")]
    Login {
        token: String,
        reason: String,
        pin_rejected: bool,
    },
    #[error("{field}: no private key {what} on PKCS#11 token {token:?}")]
    KeyNotFound {
        field: &'static str,
        what: String,
        token: String,
    },
    #[error("{field}: {count} private keys {what} on PKCS#11 token {token:?}; it must name one")]
    KeyAmbiguous {
        field: &'static str,
        what: String,
        count: usize,
        token: String,
    },
    #[error("the PKCS#11 key is {reason}")]
    UnsupportedKey { reason: String },
    #[error("auth.cert.cert_file {}: {reason}", path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("{field} differs from the running {running:?}: another PKCS#11 module or token needs a restart")]
    RestartNeeded {
        field: &'static str,
        running: String,
    },
    #[error("PKCS#11 token {token:?} did not answer within {after:?} (hung C_Sign or token?)")]
    Timeout { token: String, after: Duration },
    #[error("PKCS#11 token {token:?} is busy: too many signatures waiting")]
    Busy { token: String },
    #[error("PKCS#11 worker for token {token:?} has stopped")]
    WorkerGone { token: String },
    #[error("PKCS#11 token {token:?}: {op} failed: {reason}")]
    Token {
        token: String,
        op: &'static str,
        reason: String,
        session_lost: bool,
    },
}

impl Pkcs11Error {
    /// Restarting cannot fix it and may do harm (a rejected PIN tried again in a restart loop
    /// locks the token): the operator must change the config or the token.
    pub(crate) fn needs_operator(&self) -> bool {
        matches!(
            self,
            Self::Login {
                pin_rejected: true,
                ..
            } | Self::Pin { .. }
                | Self::Module { .. }
                | Self::KeyNotFound { .. }
                | Self::KeyAmbiguous { .. }
                | Self::UnsupportedKey { .. }
                | Self::Cert { .. }
        )
    }

    /// Worth one more try on a fresh session: the session broke, or the key vanished from
    /// it (a token store that was replaced or re-inserted shows up only in a new session).
    pub(super) fn session_lost(&self) -> bool {
        matches!(
            self,
            Self::Token {
                session_lost: true,
                ..
            } | Self::KeyNotFound { .. }
        )
    }
}

pub(super) fn token_err(token: &str, op: &'static str, e: &CkError) -> Pkcs11Error {
    use RvError as R;
    Pkcs11Error::Token {
        token: token.to_owned(),
        op,
        reason: ck(e),
        session_lost: matches!(
            e,
            CkError::Pkcs11(
                R::SessionHandleInvalid
                    | R::SessionClosed
                    | R::DeviceRemoved
                    | R::DeviceError
                    | R::TokenNotPresent
                    | R::UserNotLoggedIn
                    | R::KeyHandleInvalid
                    | R::ObjectHandleInvalid
                    | R::CryptokiNotInitialized,
                _
            )
        ),
    }
}

/// A cryptoki error in a few words: the CKR_ name and the function, not the spec's paragraph.
pub(crate) fn ck(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, func) => format!("{} in C_{func:?}", rv_name(*rv)),
        other => other.to_string(),
    }
}

pub(super) fn rv_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
