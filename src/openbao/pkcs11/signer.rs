//! rustls signing with a token key. The token's combined hash-and-sign mechanism is used when it
//! has one (CKM_ECDSA_SHA256, CKM_SHA256_RSA_PKCS, CKM_SHA256_RSA_PKCS_PSS, ...); otherwise the
//! message is hashed here and only the digest goes to the token (raw CKM_ECDSA, CKM_RSA_PKCS
//! over a DigestInfo, CKM_RSA_PKCS_PSS). Schemes the token can do neither way are not offered.
use std::sync::Arc;
use std::time::Duration;

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use rustls::sign::{Signer, SigningKey};
use rustls::{OtherError, SignatureAlgorithm, SignatureScheme};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::worker::{KeyKind, Token};
use super::Pkcs11Error;
use crate::config::Pkcs11KeyRef;

/// The token key as rustls sees it.
#[derive(Debug)]
pub(crate) struct TokenKey {
    pub(crate) token: Arc<Token>,
    pub(crate) key: Pkcs11KeyRef,
    pub(crate) kind: KeyKind,
    /// The token's mechanisms (C_GetMechanismList), to pick combined or raw signing.
    pub(crate) mechanisms: Arc<Vec<MechanismType>>,
    /// How long one signature may take before the handshake fails.
    pub(crate) budget: Duration,
}

/// Schemes in order of preference. For RSA, PKCS#1 v1.5 first where the protocol allows it
/// (TLS 1.2); rustls offers only PSS for TLS 1.3, so both mechanisms are in use.
const EC_SCHEMES: &[SignatureScheme] = &[SignatureScheme::ECDSA_NISTP256_SHA256];
const RSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
];

impl TokenKey {
    /// Whether the token has a mechanism for `scheme`, combined or raw.
    pub(crate) fn can_sign(&self, scheme: SignatureScheme) -> bool {
        SignOp::for_scheme(scheme).is_some_and(|op| op.plan(&self.mechanisms, b"").is_some())
    }

    /// The first scheme of this key's kind the token can sign with.
    pub(crate) fn any_scheme(&self) -> Option<SignatureScheme> {
        let ours = match self.kind {
            KeyKind::EcP256 => EC_SCHEMES,
            KeyKind::Rsa { .. } => RSA_SCHEMES,
        };
        ours.iter().copied().find(|s| self.can_sign(*s))
    }
}

impl SigningKey for TokenKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let ours = match self.kind {
            KeyKind::EcP256 => EC_SCHEMES,
            KeyKind::Rsa { .. } => RSA_SCHEMES,
        };
        let scheme = *ours
            .iter()
            .find(|s| offered.contains(s) && self.can_sign(**s))?;
        tracing::debug!(scheme = ?scheme, token = self.token.label(), "signing the TLS handshake on the PKCS#11 token");
        Some(Box::new(TokenSigner::new(self, scheme, self.budget)))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.kind {
            KeyKind::EcP256 => SignatureAlgorithm::ECDSA,
            KeyKind::Rsa { .. } => SignatureAlgorithm::RSA,
        }
    }
}

#[derive(Debug)]
pub(crate) struct TokenSigner {
    token: Arc<Token>,
    key: Pkcs11KeyRef,
    mechanisms: Arc<Vec<MechanismType>>,
    scheme: SignatureScheme,
    budget: Duration,
}

impl TokenSigner {
    pub(crate) fn new(key: &TokenKey, scheme: SignatureScheme, budget: Duration) -> Self {
        Self {
            token: key.token.clone(),
            key: key.key.clone(),
            mechanisms: key.mechanisms.clone(),
            scheme,
            budget,
        }
    }

    /// The signature in the encoding TLS wants (DER for ECDSA).
    pub(crate) fn sign_message(&self, message: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let unsupported = || Pkcs11Error::UnsupportedKey {
            reason: format!(
                "on a token without a mechanism for {:?} (neither combined nor raw)",
                self.scheme
            ),
        };
        let op = SignOp::for_scheme(self.scheme).ok_or_else(unsupported)?;
        let Plan { mech, data } = op.plan(&self.mechanisms, message).ok_or_else(unsupported)?;
        tracing::debug!(mechanism = %mech.mechanism().mechanism_type(), token = self.token.label(), "PKCS#11 C_Sign");
        let key = self.key.clone();
        let raw = self
            .token
            .run(self.budget, move |w| w.sign(&key, &mech.mechanism(), &data))?;
        match op {
            SignOp::Ecdsa => ecdsa_raw_to_der(&raw).ok_or_else(|| Pkcs11Error::Token {
                token: self.token.label().to_owned(),
                op: "C_Sign",
                reason: format!("returned {} bytes, not an r||s pair for P-256", raw.len()),
                session_lost: false,
            }),
            _ => Ok(raw),
        }
    }
}

impl Signer for TokenSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.sign_message(message).map_err(|e| {
            tracing::warn!(error = %e, "PKCS#11 signing failed; the TLS handshake is aborted");
            rustls::Error::Other(OtherError(Arc::new(e)))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

#[derive(Debug, Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(message).to_vec(),
            Self::Sha384 => Sha384::digest(message).to_vec(),
            Self::Sha512 => Sha512::digest(message).to_vec(),
        }
    }

    /// DER DigestInfo header for PKCS#1 v1.5 (RFC 8017 section 9.2, note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Self::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Self::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Self::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }

    /// The combined hash-and-sign mechanisms for this hash: PKCS#1 v1.5 and PSS.
    fn combined(self) -> (MechanismType, MechanismType) {
        match self {
            Self::Sha256 => (
                MechanismType::SHA256_RSA_PKCS,
                MechanismType::SHA256_RSA_PKCS_PSS,
            ),
            Self::Sha384 => (
                MechanismType::SHA384_RSA_PKCS,
                MechanismType::SHA384_RSA_PKCS_PSS,
            ),
            Self::Sha512 => (
                MechanismType::SHA512_RSA_PKCS,
                MechanismType::SHA512_RSA_PKCS_PSS,
            ),
        }
    }

    fn pss_params(self) -> PkcsPssParams {
        let (hash_alg, mgf, len) = match self {
            Self::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32u64),
            Self::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48),
            Self::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64),
        };
        PkcsPssParams {
            hash_alg,
            mgf,
            s_len: len.into(),
        }
    }
}

/// What is sent to the token for one scheme.
#[derive(Debug, Clone, Copy)]
enum SignOp {
    Ecdsa,
    RsaPkcs1(Hash),
    RsaPss(Hash),
}

impl SignOp {
    fn for_scheme(s: SignatureScheme) -> Option<Self> {
        Some(match s {
            SignatureScheme::ECDSA_NISTP256_SHA256 => Self::Ecdsa,
            SignatureScheme::RSA_PKCS1_SHA256 => Self::RsaPkcs1(Hash::Sha256),
            SignatureScheme::RSA_PKCS1_SHA384 => Self::RsaPkcs1(Hash::Sha384),
            SignatureScheme::RSA_PKCS1_SHA512 => Self::RsaPkcs1(Hash::Sha512),
            SignatureScheme::RSA_PSS_SHA256 => Self::RsaPss(Hash::Sha256),
            SignatureScheme::RSA_PSS_SHA384 => Self::RsaPss(Hash::Sha384),
            SignatureScheme::RSA_PSS_SHA512 => Self::RsaPss(Hash::Sha512),
            _ => return None,
        })
    }

    /// The combined mechanism over the message when the token has it, else the raw mechanism
    /// over a digest made here; `None` when the token has neither.
    fn plan(self, mechanisms: &[MechanismType], message: &[u8]) -> Option<Plan> {
        let has = |m: MechanismType| mechanisms.contains(&m);
        let (mech, data) = match self {
            Self::Ecdsa if has(MechanismType::ECDSA_SHA256) => {
                (Mech::EcdsaSha256, message.to_vec())
            }
            Self::Ecdsa if has(MechanismType::ECDSA) => (Mech::Ecdsa, Hash::Sha256.digest(message)),
            Self::RsaPkcs1(h) if has(h.combined().0) => (Mech::HashRsaPkcs(h), message.to_vec()),
            Self::RsaPkcs1(h) if has(MechanismType::RSA_PKCS) => (
                Mech::RsaPkcs,
                [h.digest_info_prefix(), &h.digest(message)].concat(),
            ),
            Self::RsaPss(h) if has(h.combined().1) => (Mech::HashRsaPss(h), message.to_vec()),
            Self::RsaPss(h) if has(MechanismType::RSA_PKCS_PSS) => {
                (Mech::RsaPss(h), h.digest(message))
            }
            _ => return None,
        };
        Some(Plan { mech, data })
    }
}

/// One signature as the token is asked for it.
struct Plan {
    mech: Mech,
    data: Vec<u8>,
}

/// A mechanism by name (cryptoki's `Mechanism` holds raw pointers and cannot cross threads; it
/// is built on the worker).
#[derive(Debug, Clone, Copy)]
enum Mech {
    EcdsaSha256,
    Ecdsa,
    HashRsaPkcs(Hash),
    RsaPkcs,
    HashRsaPss(Hash),
    RsaPss(Hash),
}

impl Mech {
    fn mechanism(self) -> Mechanism<'static> {
        match self {
            Self::EcdsaSha256 => Mechanism::EcdsaSha256,
            Self::Ecdsa => Mechanism::Ecdsa,
            Self::HashRsaPkcs(Hash::Sha256) => Mechanism::Sha256RsaPkcs,
            Self::HashRsaPkcs(Hash::Sha384) => Mechanism::Sha384RsaPkcs,
            Self::HashRsaPkcs(Hash::Sha512) => Mechanism::Sha512RsaPkcs,
            Self::RsaPkcs => Mechanism::RsaPkcs,
            Self::HashRsaPss(h @ Hash::Sha256) => Mechanism::Sha256RsaPkcsPss(h.pss_params()),
            Self::HashRsaPss(h @ Hash::Sha384) => Mechanism::Sha384RsaPkcsPss(h.pss_params()),
            Self::HashRsaPss(h @ Hash::Sha512) => Mechanism::Sha512RsaPkcsPss(h.pss_params()),
            Self::RsaPss(h) => Mechanism::RsaPkcsPss(h.pss_params()),
        }
    }
}

/// PKCS#11 returns ECDSA signatures as r||s; TLS wants `SEQUENCE { INTEGER r, INTEGER s }`.
fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let (r, s) = raw.split_at(32);
    let (r, s) = (der_uint(r), der_uint(s));
    let mut out = Vec::with_capacity(6 + r.len() + s.len());
    out.push(0x30);
    out.push(u8::try_from(r.len() + s.len()).ok()?);
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    Some(out)
}

/// A DER INTEGER for an unsigned big-endian number: no leading zeros, 0x00 before a high bit.
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &[0u8][..],
    };
    let pad = trimmed[0] & 0x80 != 0;
    let len = trimmed.len() + usize::from(pad);
    let mut out = Vec::with_capacity(2 + len);
    out.push(0x02);
    out.push(len as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ecdsa_becomes_minimal_der() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a 0x00 pad
        raw[31] = 1;
        raw[63] = 7; // s = 7: leading zeros dropped
        let der = ecdsa_raw_to_der(&raw).expect("64 bytes");
        assert_eq!(&der[..5], &[0x30, 2 + 33 + 3, 0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 7]);
        assert!(ecdsa_raw_to_der(&raw[..63]).is_none());
        assert_eq!(der_uint(&[0, 0]), vec![0x02, 1, 0]);
    }

    #[test]
    fn digest_info_prefix_announces_the_digest_length() {
        for (h, len) in [(Hash::Sha256, 32), (Hash::Sha384, 48), (Hash::Sha512, 64)] {
            let p = h.digest_info_prefix();
            assert_eq!(p[p.len() - 1] as usize, len);
            assert_eq!(p[1] as usize, p.len() - 2 + len);
            assert_eq!(h.digest(b"x").len(), len);
        }
    }
}
