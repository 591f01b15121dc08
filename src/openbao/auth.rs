//! Token lifecycle: login (JWT re-read from disk each time, cert via mTLS, or a token file),
//! renewal ahead of expiry, and one re-login when OpenBao says the token is no longer valid.
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::Method;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::sync::{Mutex as StdMutex, RwLock as StdRwLock};
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::http::{Http, Operation};
use super::nodes::Nodes;
use super::request::{JsonBody, Request, TokenHeader};
use super::Error;
use crate::config::AuthSettings;
use crate::telemetry::metrics;

/// A token with what we know of its lifetime. `generation` tells racing callers whether
/// someone else already replaced it.
#[derive(Clone)]
pub(crate) struct Token {
    /// The token exists only as its header (a wiped, shared buffer).
    pub(crate) secret: TokenHeader,
    pub(crate) generation: u64,
    obtained: Instant,
    ttl: Option<Duration>,
    renewable: bool,
}

impl Token {
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.ttl
            .map(|ttl| ttl.saturating_sub(self.obtained.elapsed()))
    }

    /// Renew once two thirds of the lifetime are gone, as Vault's own agent does.
    fn wants_renewal(&self) -> bool {
        match self.ttl {
            Some(ttl) => self.obtained.elapsed() >= ttl.mul_f64(2.0 / 3.0),
            None => false,
        }
    }

    fn expired(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }
}

#[derive(Serialize)]
struct JwtLogin<'a> {
    role: &'a str,
    jwt: &'a str,
}

#[derive(Serialize)]
struct CertLogin<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct RenewRequest {
    increment: String,
}

#[derive(Deserialize)]
pub(crate) struct AuthBody {
    auth: AuthInfo,
}

#[derive(Deserialize)]
struct AuthInfo {
    client_token: SecretString,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

/// `auth/token/lookup-self` (also read by the doctor).
#[derive(Deserialize)]
pub(crate) struct LookupBody {
    pub(crate) data: LookupData,
}

#[derive(Deserialize)]
pub(crate) struct LookupData {
    #[serde(default)]
    pub(crate) ttl: u64,
    #[serde(default)]
    pub(crate) renewable: bool,
    #[serde(default)]
    pub(crate) policies: Vec<String>,
    #[serde(default)]
    pub(crate) identity_policies: Vec<String>,
}

/// After a login failed because no node answered, waiters get that failure for this long
/// instead of starting another login: logins are deferred while no active node answers.
const LOGIN_DEFER: Duration = Duration::from_secs(1);

/// A token that keeps getting 403 is replaced by a fresh login at most this often.
const FORCED_RELOGIN_EVERY: Duration = Duration::from_secs(30);

type Outcome = Option<Result<Token, Error>>;

/// The one login (or renewal) in flight, shared by every waiter.
#[derive(Default)]
struct Flight {
    running: Option<watch::Receiver<Outcome>>,
    last_unavailable: Option<(Instant, Error)>,
    /// Why the last login failed, until one succeeds: what a call blocked from forcing
    /// another login reports (a refused login, not a bare 403).
    last_failure: Option<Error>,
    /// When a 403 last forced a login, and the credential file's stamp then.
    last_forced: Option<(Instant, Option<CredentialStamp>)>,
    generation: u64,
}

/// Size and modification time of the credential file: a changed file (an operator fixed the
/// JWT) allows a new forced login at once.
type CredentialStamp = (u64, std::time::SystemTime);

fn credential_stamp(settings: &AuthSettings) -> Option<CredentialStamp> {
    let path = match settings {
        AuthSettings::Jwt { jwt_file, .. } => jwt_file,
        AuthSettings::Cert { cert_file, .. } => cert_file,
        AuthSettings::Token { token_file } => token_file,
    };
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

pub(crate) struct Auth {
    settings: StdRwLock<AuthSettings>,
    current: StdRwLock<Option<Token>>,
    flight: StdMutex<Flight>,
}

fn read<T: Clone>(lock: &StdRwLock<T>) -> T {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn write<T>(lock: &StdRwLock<T>, value: T) {
    match lock.write() {
        Ok(mut g) => *g = value,
        Err(p) => *p.into_inner() = value,
    }
}

impl Auth {
    pub(crate) fn new(settings: AuthSettings) -> Self {
        Self {
            settings: StdRwLock::new(settings),
            current: StdRwLock::new(None),
            flight: StdMutex::new(Flight::default()),
        }
    }

    /// The settings logins use now (a reload replaces them).
    pub(crate) fn settings(&self) -> AuthSettings {
        read(&self.settings)
    }

    fn flight(&self) -> std::sync::MutexGuard<'_, Flight> {
        match self.flight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A usable token. A token due for renewal is still returned at once while the renewal runs
    /// in the background; only a missing or expired token makes the caller wait for a login.
    pub(crate) async fn token(self: &Arc<Self>, http: &Arc<Http>) -> Result<Token, Error> {
        match read(&self.current) {
            Some(t) if !t.expired() && !t.wants_renewal() => Ok(t),
            Some(t) if !t.expired() => {
                // A deferred or failed start changes nothing: the token is still valid.
                let _ = self.start(http, Some(t.clone()));
                Ok(t)
            }
            _ => self.join(http, None).await,
        }
    }

    /// After a 403 with token `seen`: a fresh login, unless another caller already replaced it
    /// (then that token), or a 403 already forced a login less than `FORCED_RELOGIN_EVERY` ago
    /// and the credential file is unchanged (then the last login failure, or `None`: the 403
    /// stands). So a revoked token
    /// costs one login however many calls see it, and a persistent 403 (a policy change) one
    /// login per 30 s, not one per call.
    pub(crate) async fn relogin_after_denial(
        self: &Arc<Self>,
        http: &Arc<Http>,
        seen: u64,
    ) -> Option<Result<Token, Error>> {
        {
            let mut f = self.flight();
            if let Some(t) = read(&self.current) {
                if t.generation != seen {
                    return Some(Ok(t));
                }
            }
            if f.running.is_none() {
                let stamp = credential_stamp(&read(&self.settings));
                if f.last_forced.as_ref().is_some_and(|(at, before)| {
                    at.elapsed() < FORCED_RELOGIN_EVERY && *before == stamp
                }) {
                    return f.last_failure.clone().map(Err);
                }
                f.last_forced = Some((Instant::now(), stamp));
                // A forced login is not deferred by an earlier outage: OpenBao just answered.
                f.last_unavailable = None;
            }
        }
        Some(self.join(http, None).await)
    }

    /// Forces a fresh login now (SIGHUP, `login`): joins one in flight or starts one.
    pub(crate) async fn relogin(self: &Arc<Self>, http: &Arc<Http>) -> Result<Token, Error> {
        self.join(http, None).await
    }

    /// Starts the shared login (or, with `renew`, the renewal of that token) unless one runs;
    /// returns the receiver of its outcome. The task is spawned so that a caller whose deadline
    /// passes stops waiting without aborting the login for everyone else.
    fn start(
        self: &Arc<Self>,
        http: &Arc<Http>,
        renew: Option<Token>,
    ) -> Result<watch::Receiver<Outcome>, Error> {
        let mut f = self.flight();
        if let Some(rx) = &f.running {
            return Ok(rx.clone());
        }
        if renew.is_none() {
            if let Some((at, e)) = &f.last_unavailable {
                if at.elapsed() < LOGIN_DEFER {
                    return Err(e.clone());
                }
            }
        }
        f.generation += 1;
        let generation = f.generation;
        let (tx, rx) = watch::channel(None);
        f.running = Some(rx.clone());
        drop(f);
        let (me, http) = (self.clone(), http.clone());
        tokio::spawn(async move {
            let outcome = match renew {
                Some(t) => me.renew_or_login(&http, t, generation).await,
                None => me.login(&http, generation).await,
            };
            {
                let mut f = me.flight();
                f.running = None;
                f.last_unavailable = match &outcome {
                    Err(e) if e.is_unavailable() => Some((Instant::now(), e.clone())),
                    _ => None,
                };
                f.last_failure = outcome.as_ref().err().cloned();
                if let Ok(t) = &outcome {
                    write(&me.current, Some(t.clone()));
                }
            }
            tx.send_replace(Some(outcome));
        });
        Ok(rx)
    }

    /// Waits, within the caller's deadline, for the shared login.
    async fn join(
        self: &Arc<Self>,
        http: &Arc<Http>,
        renew: Option<Token>,
    ) -> Result<Token, Error> {
        let deadline = crate::deadline::current_or(http.default_budget());
        let mut rx = self.start(http, renew)?;
        let waited = tokio::time::timeout_at(deadline.into(), rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(outcome)) => match &*outcome {
                Some(result) => result.clone(),
                None => Err(Error::NoToken(
                    "the login task ended without a result".into(),
                )),
            },
            Ok(Err(_)) => Err(Error::NoToken(
                "the login task ended without a result".into(),
            )),
            Err(_) => Err(Error::Timeout(
                deadline.saturating_duration_since(Instant::now()),
            )),
        }
    }

    /// Renews `token`; when that fails, logs in; when that fails too, keeps `token` while it is
    /// still valid (a failed re-login must not throw away a working token).
    async fn renew_or_login(
        &self,
        http: &Http,
        token: Token,
        generation: u64,
    ) -> Result<Token, Error> {
        if token.renewable {
            match self.renew(http, &token).await {
                Ok(Some(renewed)) => return Ok(renewed),
                Ok(None) => tracing::info!("token reached its maximum TTL; logging in again"),
                Err(e) => {
                    tracing::warn!(error = %e, error_class = e.class(), "token renewal failed; logging in again")
                }
            }
        }
        if matches!(read(&self.settings), AuthSettings::Token { .. }) && !token.expired() {
            // A static token cannot log in again; keep using it until it really expires.
            return Ok(token);
        }
        match self.login(http, generation).await {
            Ok(t) => Ok(t),
            Err(e) if !token.expired() => {
                tracing::warn!(error = %e, "login failed; keeping the current token while it is valid");
                Ok(token)
            }
            Err(e) => Err(e),
        }
    }

    /// `Ok(None)` when the renewal did not extend the lease meaningfully (max TTL reached).
    async fn renew(&self, http: &Http, token: &Token) -> Result<Option<Token>, Error> {
        let requested = token.ttl.unwrap_or_default().as_secs().max(60);
        let request = Request::new(
            Operation::Renew,
            Method::POST,
            super::contract::RENEW_SELF.fixed(),
        )
        .token(&token.secret)
        .body(JsonBody::new(&RenewRequest {
            increment: format!("{requested}s"),
        })?);
        let body: Option<AuthBody> = http.call(request).await?;
        let info = body
            .ok_or_else(|| Error::Protocol("renew-self returned no auth block".into()))?
            .auth;
        let ttl = Duration::from_secs(info.lease_duration);
        let original = token.ttl.unwrap_or_default();
        if ttl < original / 3 {
            return Ok(None);
        }
        let renewed = Token {
            secret: token.secret.clone(),
            generation: token.generation,
            obtained: Instant::now(),
            ttl: Some(ttl),
            renewable: info.renewable,
        };
        tracing::info!(ttl_seconds = ttl.as_secs(), "renewed OpenBao token");
        metrics::token_ttl(ttl);
        Ok(Some(renewed))
    }

    async fn login(&self, http: &Http, generation: u64) -> Result<Token, Error> {
        let settings = read(&self.settings);
        let nodes = http.nodes();
        let result = login_with(http, &nodes, &settings, generation).await;
        log_login(settings.method_name(), &result);
        result
    }

    /// Installs settings and a token proven on the side (reload).
    pub(crate) fn install(&self, settings: AuthSettings, token: Token) {
        let mut f = self.flight();
        f.generation += 1;
        let token = Token {
            generation: f.generation,
            ..token
        };
        write(&self.settings, settings);
        write(&self.current, Some(token));
        f.last_unavailable = None;
        f.last_failure = None;
    }
}

fn log_login(method: &'static str, result: &Result<Token, Error>) {
    metrics::auth_login(method, if result.is_ok() { "success" } else { "failure" });
    match result {
        Ok(t) => {
            tracing::info!(
                method,
                ttl_seconds = t.ttl.map(|d| d.as_secs()),
                "logged in to OpenBao"
            );
            if let Some(ttl) = t.ttl {
                metrics::token_ttl(ttl);
            }
        }
        Err(e) => {
            tracing::warn!(method, error = %e, error_class = e.class(), "OpenBao login failed")
        }
    }
}

/// Logs in with `settings` against `nodes` (the installed ones, or a reload's candidates).
pub(crate) async fn login_with(
    http: &Http,
    nodes: &Nodes,
    settings: &AuthSettings,
    generation: u64,
) -> Result<Token, Error> {
    let (mount_path, body) = match settings {
        AuthSettings::Jwt {
            mount_path,
            role,
            jwt_file,
        } => {
            let jwt = read_secret_file("JWT file", jwt_file)?;
            let body = JsonBody::new(&JwtLogin {
                role,
                jwt: jwt.as_str(),
            })?;
            (mount_path, body)
        }
        AuthSettings::Cert {
            mount_path, name, ..
        } => {
            let body = JsonBody::new(&CertLogin {
                name: name.as_deref(),
            })?;
            (mount_path, body)
        }
        AuthSettings::Token { token_file } => {
            return token_from_file(http, nodes, token_file, generation).await
        }
    };
    let path = format!("auth/{mount_path}/login");
    login_call(http, nodes, &path, body, generation).await
}

/// A login the auth method refused (400 wrong or expired JWT, 403 unknown role or certificate)
/// is an authentication failure, not a bad KMS request.
async fn login_call(
    http: &Http,
    nodes: &Nodes,
    path: &str,
    body: JsonBody,
    generation: u64,
) -> Result<Token, Error> {
    let resp: Option<AuthBody> = http
        .call_on(
            nodes,
            Request::new(Operation::Login, Method::POST, path).body(body),
        )
        .await
        .map_err(|e| match e {
            Error::BadRequest(m) | Error::PermissionDenied(m) => Error::LoginRefused(m),
            other => other,
        })?;
    let info = resp
        .ok_or_else(|| Error::Protocol("login returned no auth block".into()))?
        .auth;
    Ok(Token {
        secret: TokenHeader::new(&info.client_token)?,
        generation,
        obtained: Instant::now(),
        ttl: (info.lease_duration > 0).then(|| Duration::from_secs(info.lease_duration)),
        renewable: info.renewable,
    })
}

async fn token_from_file(
    http: &Http,
    nodes: &Nodes,
    path: &std::path::Path,
    generation: u64,
) -> Result<Token, Error> {
    let raw = read_secret_file("token file", path)?;
    let secret = TokenHeader::new(&SecretString::from(raw.as_str()))?;
    let lookup: Option<LookupBody> = http
        .call_on(
            nodes,
            Request::new(
                Operation::Lookup,
                Method::GET,
                super::contract::LOOKUP_SELF.fixed(),
            )
            .token(&secret),
        )
        .await
        .map_err(|e| match e {
            Error::PermissionDenied(m) => Error::LoginRefused(m),
            other => other,
        })?;
    let data = lookup
        .ok_or_else(|| Error::Protocol("lookup-self returned no data".into()))?
        .data;
    Ok(Token {
        secret,
        generation,
        obtained: Instant::now(),
        ttl: (data.ttl > 0).then(|| Duration::from_secs(data.ttl)),
        renewable: data.renewable,
    })
}

fn read_secret_file(
    what: &'static str,
    path: &std::path::Path,
) -> Result<Zeroizing<String>, Error> {
    let mut trimmed =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| Error::Credential {
                what,
                path: path.to_path_buf(),
                source,
            })?,
        );
    // Trimmed in place: no second copy of the credential.
    let end = trimmed.trim_end().len();
    trimmed.truncate(end);
    let start = trimmed.len() - trimmed.trim_start().len();
    trimmed.drain(..start);
    if trimmed.is_empty() {
        return Err(Error::NoToken(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(trimmed)
}
