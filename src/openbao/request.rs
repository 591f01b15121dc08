//! One request to OpenBao as the client carries it: what is asked (`Request`: operation, method,
//! path, token, body), and the state of the call while it goes through the nodes (`Call`:
//! deadline, attempts). The body and the token header hold secrets in wiped buffers.
use std::time::{Duration, Instant};

use ::http::header::HeaderValue;
use ::http::Method;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::http::Operation;
use super::Error;

/// A request body serialised straight into a buffer that is wiped when the request is done:
/// bodies carry the JWT and base64 plaintext, so no `serde_json::Value` or plain `Vec` holds them.
/// Attempts on several nodes share the one buffer (reference-counted, never copied).
#[derive(Clone)]
pub(crate) struct JsonBody(bytes::Bytes);

impl JsonBody {
    pub(crate) fn new(value: &impl serde::Serialize) -> Result<Self, Error> {
        let mut buf = Zeroizing::new(Vec::with_capacity(256));
        serde_json::to_writer(&mut *buf, value).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(Self(bytes::Bytes::from_owner(buf)))
    }

    /// Hands the buffer to the HTTP stack without a copy; the last reference wipes it.
    pub(super) fn to_body(&self) -> super::conn::Body {
        super::conn::Body::new(self.0.clone())
    }
}

/// An OpenBao token as the `X-Vault-Token` header it is sent in, built once per login: the
/// header's bytes are the only copy of the token in the provider, in a buffer wiped when the
/// last clone (the token, or a request still in flight) is dropped. Cloning shares that buffer.
#[derive(Clone)]
pub(crate) struct TokenHeader(HeaderValue);

impl TokenHeader {
    pub(crate) fn new(token: &SecretString) -> Result<Self, Error> {
        let shared =
            bytes::Bytes::from_owner(Zeroizing::new(token.expose_secret().as_bytes().to_vec()));
        let mut value = HeaderValue::from_maybe_shared(shared)
            .map_err(|_| Error::NoToken("token holds characters not allowed in a header".into()))?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// The header to send: shares the token's wiped buffer (a reference count), no copy.
    pub(super) fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Debug for TokenHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHeader(<redacted>)")
    }
}

/// How the answer's HTTP status is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Accept {
    /// 2xx is data, anything else a typed error (every API call).
    Success,
    /// Any status is returned as it is (sys/health encodes the node's state in it).
    AnyStatus,
}

/// What is asked of OpenBao, whichever node answers it. Cloning shares the body's wiped buffer,
/// so a retry after a fresh login sends the same bytes with another token.
#[derive(Clone)]
pub(crate) struct Request<'a> {
    pub(super) op: Operation,
    pub(super) method: Method,
    pub(super) path: &'a str,
    /// `None` for the calls made without a token (login, sys/health).
    pub(super) token: Option<&'a TokenHeader>,
    pub(super) body: Option<JsonBody>,
    pub(super) accept: Accept,
}

impl<'a> Request<'a> {
    pub(crate) fn new(op: Operation, method: Method, path: &'a str) -> Self {
        Self {
            op,
            method,
            path,
            token: None,
            body: None,
            accept: Accept::Success,
        }
    }

    pub(crate) fn token(self, token: &'a TokenHeader) -> Self {
        Self {
            token: Some(token),
            ..self
        }
    }

    pub(crate) fn body(self, body: JsonBody) -> Self {
        Self {
            body: Some(body),
            ..self
        }
    }

    pub(super) fn any_status(self) -> Self {
        Self {
            accept: Accept::AnyStatus,
            ..self
        }
    }
}

/// One request on its way through the nodes: failover, redirects and the jittered retry all
/// spend the one deadline, and every attempt is counted here, whichever node it went to.
pub(super) struct Call<'a> {
    pub(super) request: Request<'a>,
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    /// Attempts sent so far (redirected ones included).
    pub(super) attempts: u32,
}

impl<'a> Call<'a> {
    pub(super) fn new(request: Request<'a>, deadline: Instant) -> Self {
        Self {
            request,
            started: Instant::now(),
            deadline,
            attempts: 0,
        }
    }

    /// The deadline of an attempt starting now: the call's, but no later than one node's
    /// `openbao.timeout`.
    pub(super) fn attempt_deadline(&self, timeout: Duration) -> Instant {
        self.deadline.min(Instant::now() + timeout)
    }
}
