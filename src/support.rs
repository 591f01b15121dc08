//! Small helpers shared by modules that do not otherwise depend on each other (the OpenBao and
//! etcd HTTP clients, the CLI): one error-chain formatter, one size-capped body reader, one
//! rustls crypto-provider installer.
use std::sync::Arc;

/// `e` and all its sources, joined with ": " (reqwest's Display hides the cause: refused,
/// TLS alert, ...).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Why a capped body read stopped.
pub(crate) enum ReadError {
    /// The body is (or says it is) larger than the cap.
    TooLarge,
    Transport(Box<dyn std::error::Error + Send + Sync>),
}

/// Reads `body` into `buf`, refusing more than `max` bytes (checked against its announced
/// length first, then while reading). `buf` may be a zeroizing buffer.
pub(crate) async fn read_capped<B>(body: B, max: usize, buf: &mut Vec<u8>) -> Result<(), ReadError>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    if body.size_hint().lower() > max as u64 {
        return Err(ReadError::TooLarge);
    }
    // One allocation for an announced length, not a copy of the body per growth step.
    let announced = usize::try_from(body.size_hint().lower()).unwrap_or(max);
    buf.reserve(announced.min(max));
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Transport(e.into()))?;
        if let Ok(chunk) = frame.into_data() {
            if buf.len() + chunk.len() > max {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
    }
    Ok(())
}

/// ring, also installed as the process default so no later client can panic for lack of one
/// (reqwest is built without a default crypto provider).
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A reqwest client identity from a PEM private key and certificate chain (reqwest wants both
/// in one PEM buffer); the joined copy holding the key is wiped when dropped.
pub(crate) fn pem_identity(key: &[u8], cert: &[u8]) -> Result<reqwest::Identity, reqwest::Error> {
    let mut both = zeroize::Zeroizing::new(Vec::with_capacity(key.len() + 1 + cert.len()));
    both.extend_from_slice(key);
    both.push(b'\n');
    both.extend_from_slice(cert);
    reqwest::Identity::from_pem(&both)
}
