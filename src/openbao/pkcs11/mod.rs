//! Cert auth with the client key on a PKCS#11 token (HSM, TPM via tpm2-pkcs11, SoftHSM2): the
//! key never leaves the token, it only signs TLS handshakes. The TLS builder asks for one
//! client-certificate resolver; `doctor` asks for a report on the key.
mod error;
mod signer;
mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use secrecy::SecretString;
use zeroize::Zeroizing;

pub(crate) use error::Pkcs11Error;

use crate::config::Pkcs11Settings;
use signer::{TokenKey, TokenSigner};

/// Token setup (login, key lookup) may take longer than one signature, e.g. on a TPM.
const MIN_SETUP_BUDGET: Duration = Duration::from_secs(5);

/// The client certificate resolver for the TLS config: the chain from `cert_file`, signing on
/// the token. Re-reads `pin_file` and `cert_file` (SIGHUP), checks that the key signs and that
/// the certificate's public key is the token key's.
pub(crate) fn client_cert_resolver(
    settings: &Pkcs11Settings,
    cert_file: &Path,
    budget: Duration,
) -> Result<Arc<dyn ResolvesClientCert>, Pkcs11Error> {
    let (key, chain, info) = open_key(settings, cert_file, budget)?;
    if info.extractable || !info.sensitive {
        tracing::warn!(
            token = key.token.label(),
            extractable = info.extractable,
            sensitive = info.sensitive,
            "the PKCS#11 client key could leave the token; generate it as sensitive and non-extractable"
        );
    }
    let ck = CertifiedKey::new(chain, Arc::new(key));
    Ok(Arc::new(Resolver(Arc::new(ck))))
}

/// What `doctor` reports about the token key.
#[derive(Debug, Clone)]
pub(crate) struct KeyReport {
    pub(crate) module: String,
    pub(crate) token: String,
    pub(crate) key: String,
    pub(crate) sensitive: bool,
    pub(crate) extractable: bool,
    pub(crate) always_sensitive: bool,
    pub(crate) never_extractable: bool,
}

/// Loads the module, finds token and key, and proves the certificate matches (by a signature
/// the certificate's public key verifies).
pub(crate) fn inspect(
    settings: &Pkcs11Settings,
    cert_file: &Path,
    budget: Duration,
) -> Result<KeyReport, Pkcs11Error> {
    let (key, _, info) = open_key(settings, cert_file, budget)?;
    Ok(KeyReport {
        module: key.token.library_description(),
        token: key.token.label().to_owned(),
        key: format!("{} ({})", info.kind, key_name(settings)),
        sensitive: info.sensitive,
        extractable: info.extractable,
        always_sensitive: info.always_sensitive,
        never_extractable: info.never_extractable,
    })
}

fn key_name(settings: &Pkcs11Settings) -> String {
    match &settings.key {
        crate::config::Pkcs11KeyRef::Label(l) => format!("label {l:?}"),
        crate::config::Pkcs11KeyRef::Id(id) => format!("CKA_ID {}", error::hex(id)),
    }
}

fn open_key(
    settings: &Pkcs11Settings,
    cert_file: &Path,
    budget: Duration,
) -> Result<(TokenKey, Vec<CertificateDer<'static>>, worker::KeyInfo), Pkcs11Error> {
    let chain = read_chain(cert_file)?;
    let pin = read_pin(&settings.pin_file)?;
    let setup = budget.max(MIN_SETUP_BUDGET);
    let token = worker::token(&settings.module_path, &settings.token_label, pin.clone())?;
    token.set_pin(pin, setup)?;
    let key_ref = settings.key.clone();
    let info = token.run(setup, move |w| w.key_info(&key_ref))?;
    let key = TokenKey {
        token,
        key: settings.key.clone(),
        kind: info.kind,
        mechanisms: Arc::new(info.mechanisms.clone()),
        budget,
    };
    check_match(&key, &chain[0], cert_file, setup)?;
    Ok((key, chain, info))
}

/// Signs a fresh challenge on the token and verifies it with the certificate's public key.
fn check_match(
    key: &TokenKey,
    cert: &CertificateDer<'_>,
    cert_file: &Path,
    budget: Duration,
) -> Result<(), Pkcs11Error> {
    let scheme = key
        .any_scheme()
        .ok_or_else(|| Pkcs11Error::UnsupportedKey {
            reason: format!(
                "a {} key on a token that offers no signing mechanism for it",
                key.kind
            ),
        })?;
    let mismatch = |reason: String| Pkcs11Error::Cert {
        path: cert_file.to_path_buf(),
        reason,
    };
    let mut challenge = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut challenge[..]);
    let signer = TokenSigner::new(key, scheme, budget);
    let signature = signer.sign_message(&challenge)?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let alg = algs
        .mapping
        .iter()
        .find(|(s, _)| *s == scheme)
        .and_then(|(_, a)| a.first())
        .ok_or_else(|| mismatch(format!("no verifier for {scheme:?}")))?;
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| mismatch(format!("not a usable X.509 v3 certificate: {e}")))?;
    ee.verify_signature(*alg, &challenge, &signature)
        .map_err(|e| {
            mismatch(format!(
                "its public key does not match the {} key on token {:?} ({e})",
                key.kind,
                key.token.label()
            ))
        })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, Pkcs11Error> {
    let err = |reason: String| Pkcs11Error::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(chain)
}

/// The PIN: the first line of `pin_file`, which only its owner may read.
fn read_pin(path: &Path) -> Result<SecretString, Pkcs11Error> {
    use std::os::unix::fs::PermissionsExt;
    let err = |reason: String| Pkcs11Error::Pin {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mode = meta.permissions().mode();
    if mode & 0o044 != 0 {
        return Err(err(format!(
            "is readable by group or others (mode {:04o}); chmod 0600 it",
            mode & 0o7777
        )));
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?,
    );
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        return Err(err("is empty; it must hold the token's user PIN".into()));
    }
    Ok(SecretString::from(line.to_owned()))
}

/// Always presents the token-backed certificate; rustls then asks the key for a scheme among
/// those the server offered.
#[derive(Debug)]
struct Resolver(Arc<CertifiedKey>);

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
