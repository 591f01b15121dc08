//! One place that sends requests to OpenBao: timeouts, size caps, error classification, metrics.
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::tls::from_settings;
use super::Error;
use crate::config::{AuthSettings, OpenBaoSettings};
use crate::support::{read_capped, ReadError};
use crate::telemetry::metrics;

/// OpenBao answers for this provider are small; anything larger is refused unread.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Bounded label set for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Login,
    Renew,
    Lookup,
    ReadKey,
    Encrypt,
    Decrypt,
    Health,
    ReadMount,
    ReadKeysConfig,
    Capabilities,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Renew => "renew",
            Self::Lookup => "lookup",
            Self::ReadKey => "read_key",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Health => "health",
            Self::ReadMount => "read_mount",
            Self::ReadKeysConfig => "read_keys_config",
            Self::Capabilities => "capabilities",
        }
    }
}

pub(crate) struct Http {
    client: RwLock<Arc<reqwest::Client>>,
    base: Url,
    namespace: Option<String>,
    timeout: Duration,
}

impl Http {
    pub(crate) fn new(settings: &OpenBaoSettings, auth: &AuthSettings) -> Result<Self, Error> {
        Ok(Self {
            client: RwLock::new(Arc::new(build_client(settings, auth)?)),
            base: settings.address.clone(),
            namespace: settings.namespace.clone(),
            timeout: settings.timeout,
        })
    }

    /// Re-reads CA and client certificate files (SIGHUP); the old client stays on error.
    pub(crate) fn reload(
        &self,
        settings: &OpenBaoSettings,
        auth: &AuthSettings,
    ) -> Result<(), Error> {
        let fresh = Arc::new(build_client(settings, auth)?);
        if let Ok(mut guard) = self.client.write() {
            *guard = fresh;
        }
        Ok(())
    }

    fn client(&self) -> Arc<reqwest::Client> {
        match self.client.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sends one request and returns the JSON body decoded as `T` (or `None` for 204).
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        op: Operation,
        method: Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<&serde_json::Value>,
    ) -> Result<Option<T>, Error> {
        let started = Instant::now();
        let result = self.send(method, path, token, body).await;
        let status = match &result {
            Ok((code, _)) => code.as_u16().to_string(),
            Err(e) => e.class().to_owned(),
        };
        metrics::openbao_request(op.as_str(), &status, started.elapsed());
        let (code, bytes) = result?;
        if code == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Protocol(format!("{} {path}: {e}", op.as_str())))
    }

    /// Like `call`, but any HTTP status is returned rather than turned into an error (sys/health).
    pub(crate) async fn status_of(&self, op: Operation, path: &str) -> Result<u16, Error> {
        let started = Instant::now();
        let url = self.url(path)?;
        let sent = self
            .client()
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| transport_error(e, self.timeout));
        let status = match &sent {
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) => e.class().to_owned(),
        };
        metrics::openbao_request(op.as_str(), &status, started.elapsed());
        Ok(sent?.status().as_u16())
    }

    fn url(&self, path: &str) -> Result<Url, Error> {
        self.base
            .join(&format!("v1/{}", path.trim_start_matches('/')))
            .map_err(|e| Error::Protocol(format!("bad request path {path:?}: {e}")))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), Error> {
        let mut req = self
            .client()
            .request(method, self.url(path)?)
            .timeout(self.timeout);
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(token) = token {
            let mut value =
                reqwest::header::HeaderValue::from_str(token.expose_secret()).map_err(|_| {
                    Error::NoToken("token holds characters not allowed in a header".into())
                })?;
            value.set_sensitive(true);
            req = req.header("X-Vault-Token", value);
        }
        if let Some(body) = body {
            let bytes = Zeroizing::new(
                serde_json::to_vec(body).map_err(|e| Error::Protocol(e.to_string()))?,
            );
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.to_vec());
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| transport_error(e, self.timeout))?;
        let status = resp.status();
        let mut buf = Zeroizing::new(Vec::new());
        read_capped(&mut resp, MAX_RESPONSE_BYTES, &mut buf)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => Error::ResponseTooLarge(MAX_RESPONSE_BYTES),
                ReadError::Transport(e) => transport_error(e, self.timeout),
            })?;
        if status.is_success() {
            return Ok((status, buf));
        }
        let message = error_messages(&buf);
        Err(match status.as_u16() {
            400 => Error::BadRequest(message),
            403 => Error::PermissionDenied(message),
            404 => Error::NotFound(message),
            429 => Error::RateLimited,
            503 => Error::Sealed,
            code => Error::Server {
                status: code,
                message,
            },
        })
    }
}

fn build_client(settings: &OpenBaoSettings, auth: &AuthSettings) -> Result<reqwest::Client, Error> {
    let tls = from_settings(settings, auth)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::limited(2))
        .no_proxy()
        .user_agent(concat!("bao-kms-provider/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Tls(format!("cannot build the HTTP client: {e}")))
}

fn transport_error(e: reqwest::Error, timeout: Duration) -> Error {
    if let Some(p11) = pkcs11_cause(&e) {
        return Error::Pkcs11(p11);
    }
    if e.is_timeout() {
        return Error::Timeout(timeout);
    }
    Error::Unreachable(crate::support::error_chain(&e))
}

/// A handshake that failed because the token could not sign is a token problem, not an
/// unreachable OpenBao: find our error inside the io::Error rustls reported.
fn pkcs11_cause(e: &reqwest::Error) -> Option<super::Pkcs11Error> {
    type Dyn<'a> = &'a (dyn std::error::Error + 'static);
    let mut todo: Vec<Dyn<'_>> = vec![e];
    // Bounded: error chains are short; a cycle must not loop forever.
    for _ in 0..32 {
        let s = todo.pop()?;
        if let Some(rustls::Error::Other(other)) = s.downcast_ref::<rustls::Error>() {
            if let Some(p) = other.0.downcast_ref::<super::Pkcs11Error>() {
                return Some(p.clone());
            }
        }
        // io::Error::source() skips the error it wraps; look at that one too.
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            todo.push(inner);
        }
        if let Some(next) = s.source() {
            todo.push(next);
        }
    }
    None
}

/// OpenBao's `{"errors": [...]}`, shortened; never echoes request data.
fn error_messages(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    let text = serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.join("; "))
        .unwrap_or_default();
    let mut text = if text.is_empty() {
        "no error message".to_owned()
    } else {
        text
    };
    if text.len() > 300 {
        let mut cut = 300;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}
