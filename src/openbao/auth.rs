//! Token lifecycle: one shared login at a time (the requests are in `login`), renewal ahead of
//! expiry, and one re-login when OpenBao says the token is no longer valid.
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::Method;
use serde::Serialize;
use std::sync::{Mutex as StdMutex, RwLock as StdRwLock};
use tokio::sync::watch;

use super::http::{Http, Operation};
use super::login::{log_login, login_with, AuthBody};
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
    pub(super) obtained: Instant,
    pub(super) ttl: Option<Duration>,
    pub(super) renewable: bool,
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
struct RenewRequest {
    increment: String,
}

/// After a login failed because no node answered, work outside a KMS call (the probe loop, the
/// CLI) gets that failure for this long instead of starting another login. A KMS call is never
/// deferred: it may be the first to meet OpenBao back after an outage, and a stale failure
/// would fail it for nothing. Its login costs what its Transit request would have cost, and is
/// shared by concurrent calls.
const LOGIN_DEFER: Duration = Duration::from_secs(1);

/// After the auth method refused a login, the same credential file is not offered again for this
/// long (it would be refused again; with an expired JWT on disk every call would cost OpenBao a
/// refused login). A replaced file is tried at once: the check is the file's stamp, on demand.
const REFUSED_HOLD: Duration = Duration::from_secs(1);

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
    /// The credential file's stamp when the latest login (or renewal) started.
    last_tried: Option<CredentialStamp>,
    /// When the auth method last refused a login, the stamp of the file it was given, and why.
    last_refused: Option<(Instant, Option<CredentialStamp>, Error)>,
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
        if renew.is_none() && !crate::deadline::in_call() {
            if let Some((at, e)) = &f.last_unavailable {
                if at.elapsed() < LOGIN_DEFER {
                    return Err(e.clone());
                }
            }
        }
        let stamp = credential_stamp(&read(&self.settings));
        if renew.is_none() {
            if let Some((at, refused, e)) = &f.last_refused {
                if at.elapsed() < REFUSED_HOLD && *refused == stamp {
                    return Err(e.clone());
                }
            }
        }
        f.generation += 1;
        let generation = f.generation;
        f.last_tried = stamp;
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
                f.last_refused = match &outcome {
                    Err(e) if matches!(e, Error::LoginRefused(_)) => {
                        Some((Instant::now(), stamp, e.clone()))
                    }
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

    /// Waits, within the caller's deadline, for the shared login. A login refused with a
    /// credential file that has been replaced since it was read (a new JWT written while the
    /// login ran) is tried once more with the new file: the caller asked after the change.
    async fn join(
        self: &Arc<Self>,
        http: &Arc<Http>,
        renew: Option<Token>,
    ) -> Result<Token, Error> {
        let deadline = crate::deadline::current_or(http.default_budget());
        match self.wait(http, renew, deadline).await {
            Err(e) if !e.is_unavailable() && self.credential_changed() => {
                tracing::info!(error = %e, "login failed with a credential file replaced since; logging in with the new one");
                self.wait(http, None, deadline).await
            }
            other => other,
        }
    }

    /// Whether the credential file differs from what the latest login read, or another caller
    /// already started the login that reads it.
    fn credential_changed(&self) -> bool {
        let now = credential_stamp(&read(&self.settings));
        let f = self.flight();
        f.running.is_some() || f.last_tried != now
    }

    /// Starts or joins the shared login and waits for its outcome until `deadline`.
    async fn wait(
        self: &Arc<Self>,
        http: &Arc<Http>,
        renew: Option<Token>,
        deadline: Instant,
    ) -> Result<Token, Error> {
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
                    tracing::warn!(error = %e, error_class = e.class().as_str(), "token renewal failed; logging in again")
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
        f.last_refused = None;
        f.last_failure = None;
    }
}
