//! When the login credential ends: the JWT's `exp` claim, or the earliest notAfter of the
//! client certificate file. Read from the files, not from OpenBao, so an ending credential
//! shows (metric, log, `doctor`) before the login it would break. Nothing here logs or returns
//! the credential itself.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use x509_cert::der::Decode;
use zeroize::Zeroizing;

use crate::config::AuthSettings;
use crate::telemetry::metrics;

/// Which credential: the label value of `openbao_kms_credential_expiry_timestamp_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential {
    Jwt,
    ClientCertificate,
}

impl Credential {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ClientCertificate => "client_certificate",
        }
    }
}

/// A credential and the moment it stops being accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expiry {
    pub(crate) credential: Credential,
    pub(crate) path: PathBuf,
    pub(crate) not_after: SystemTime,
}

impl Expiry {
    /// Time left at `now`; `None` once it has ended.
    pub(crate) fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.not_after.duration_since(now).ok()
    }

    fn unix_seconds(&self) -> i64 {
        match self.not_after.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExpiryError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The reason never quotes the file's content.
    #[error("{what} {path} cannot be parsed: {reason}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The expiry of the configured credential: `Ok(None)` for token auth (its TTL is the token
/// gauge) and for a JWT without an `exp` claim.
pub(crate) fn credential_expiry(auth: &AuthSettings) -> Result<Option<Expiry>, ExpiryError> {
    match auth {
        AuthSettings::Jwt { jwt_file, .. } => Ok(jwt_expiry(jwt_file)?.map(|not_after| Expiry {
            credential: Credential::Jwt,
            path: jwt_file.clone(),
            not_after,
        })),
        AuthSettings::Cert { cert_file, .. } => Ok(Some(Expiry {
            credential: Credential::ClientCertificate,
            path: cert_file.clone(),
            not_after: certificate_not_after(cert_file)?,
        })),
        AuthSettings::Token { .. } => Ok(None),
    }
}

#[derive(Deserialize)]
struct Claims {
    /// NumericDate: seconds since the epoch, possibly with a fraction (RFC 7519).
    #[serde(default)]
    exp: Option<f64>,
}

fn jwt_expiry(path: &Path) -> Result<Option<SystemTime>, ExpiryError> {
    const WHAT: &str = "JWT file";
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| ExpiryError::Read {
                what: WHAT,
                path: path.to_path_buf(),
                source,
            })?,
        );
    jwt_exp(text.trim()).map_err(|reason| ExpiryError::Parse {
        what: WHAT,
        path: path.to_path_buf(),
        reason: reason.into(),
    })
}

/// The `exp` claim of a compact JWS (`header.payload.signature`); the signature is OpenBao's to
/// check. Errors are fixed texts, so no part of the token reaches a log.
fn jwt_exp(token: &str) -> Result<Option<SystemTime>, &'static str> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (header.payload.signature)");
    };
    let json = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| "the JWT payload is not base64url")?,
    );
    let claims: Claims =
        serde_json::from_slice(&json).map_err(|_| "the JWT payload is not a JSON object")?;
    match claims.exp {
        None => Ok(None),
        Some(exp) if (0.0..1e12).contains(&exp) => {
            Ok(Some(UNIX_EPOCH + Duration::from_secs_f64(exp)))
        }
        Some(_) => Err("the JWT exp claim is not a time"),
    }
}

/// The earliest notAfter of the certificates in `path` (the client certificate and any chain
/// sent with it): the login fails when the first of them ends.
fn certificate_not_after(path: &Path) -> Result<SystemTime, ExpiryError> {
    const WHAT: &str = "client certificate";
    let err = |reason: String| ExpiryError::Parse {
        what: WHAT,
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|source| ExpiryError::Read {
        what: WHAT,
        path: path.to_path_buf(),
        source,
    })?;
    let mut earliest: Option<SystemTime> = None;
    for der in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der = der.map_err(|e| err(format!("not PEM: {e}")))?;
        let cert = x509_cert::Certificate::from_der(der.as_ref())
            .map_err(|e| err(format!("not an X.509 certificate: {e}")))?;
        let not_after = UNIX_EPOCH + cert.tbs_certificate.validity.not_after.to_unix_duration();
        earliest = Some(earliest.map_or(not_after, |e| e.min(not_after)));
    }
    earliest.ok_or_else(|| err("no CERTIFICATE block".into()))
}

/// What identifies the credential in use. The JWT file is read at every login, so its size and
/// modification time tell a new JWT; the client certificate is loaded at start and reload only,
/// so its path stands for it until `ExpiryWatch::reloaded` (a replaced file is not in use yet).
type Stamp = (PathBuf, Option<(u64, SystemTime)>);

fn stamp(auth: &AuthSettings) -> Option<Stamp> {
    match auth {
        AuthSettings::Jwt { jwt_file, .. } => {
            let meta = std::fs::metadata(jwt_file)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            Some((jwt_file.clone(), meta))
        }
        AuthSettings::Cert { cert_file, .. } => Some((cert_file.clone(), None)),
        AuthSettings::Token { .. } => None,
    }
}

/// Keeps the expiry gauge current from the probe loop: the credential is parsed again only when
/// it changed, and each one is warned about once when it ends within the margin (or cannot be
/// read), so the journal gets one line, not one per probe.
#[derive(Default)]
pub(crate) struct ExpiryWatch {
    seen: Option<Stamp>,
    expiry: Option<Expiry>,
    warned: bool,
}

impl ExpiryWatch {
    /// A reload installed new credentials: read them again at the next check.
    pub(crate) fn reloaded(&mut self) {
        self.seen = None;
    }

    pub(crate) fn check(&mut self, auth: &AuthSettings, margin: Duration, now: SystemTime) {
        let current = stamp(auth);
        if current.is_none() {
            *self = Self::default();
            metrics::credential_expiry(None);
            return;
        }
        if current != self.seen {
            self.seen = current;
            self.warned = false;
            self.expiry = match credential_expiry(auth) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell when the OpenBao login credential expires");
                    self.warned = true;
                    None
                }
            };
            metrics::credential_expiry(
                self.expiry
                    .as_ref()
                    .map(|e| (e.credential.label(), e.unix_seconds())),
            );
        }
        let Some(e) = &self.expiry else { return };
        if self.warned {
            return;
        }
        match e.remaining(now) {
            None => {
                self.warned = true;
                tracing::warn!(
                    credential = e.credential.label(),
                    path = %e.path.display(),
                    not_after = %humantime::format_rfc3339_seconds(e.not_after),
                    "the OpenBao login credential has expired: logins fail until it is replaced"
                );
            }
            Some(left) if left <= margin => {
                self.warned = true;
                tracing::warn!(
                    credential = e.credential.label(),
                    path = %e.path.display(),
                    not_after = %humantime::format_rfc3339_seconds(e.not_after),
                    expires_in = %humantime::format_duration(Duration::from_secs(left.as_secs())),
                    "the OpenBao login credential expires within auth.expiry_warning: replace it"
                );
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn exp_claim_is_read_from_the_payload() {
        assert_eq!(
            jwt_exp(&jwt(r#"{"sub":"x","exp":1700000000}"#)),
            Ok(Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)))
        );
        assert_eq!(
            jwt_exp(&jwt(r#"{"exp":1700000000.5}"#)),
            Ok(Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)))
        );
        assert_eq!(jwt_exp(&jwt(r#"{"sub":"x"}"#)), Ok(None));
    }

    #[test]
    fn malformed_tokens_are_refused_without_quoting_them() {
        for bad in [
            "secret-token-without-dots",
            "a.b",
            "a.b.c.d",
            "a.!!!.c",
            &jwt("not json secret"),
            &jwt(r#"{"exp":"tomorrow"}"#),
            &jwt(r#"{"exp":-5}"#),
        ] {
            let e = jwt_exp(bad).expect_err(bad);
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
