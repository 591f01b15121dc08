//! Token lifecycle: login (JWT re-read from disk each time, cert via mTLS, or a token file),
//! renewal ahead of expiry, and one re-login when OpenBao says the token is no longer valid.
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Mutex, RwLock};
use zeroize::Zeroizing;

use super::http::{Http, Operation};
use super::Error;
use crate::config::AuthSettings;
use crate::telemetry::metrics;

/// A token with what we know of its lifetime. `generation` tells racing callers whether
/// someone else already replaced it.
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) secret: Arc<SecretString>,
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

#[derive(Deserialize)]
struct AuthBody {
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

pub(crate) struct Auth {
    settings: RwLock<AuthSettings>,
    current: RwLock<Option<Token>>,
    login_lock: Mutex<u64>,
}

impl Auth {
    pub(crate) fn new(settings: AuthSettings) -> Self {
        Self {
            settings: RwLock::new(settings),
            current: RwLock::new(None),
            login_lock: Mutex::new(0),
        }
    }

    pub(crate) async fn set_settings(&self, settings: AuthSettings) {
        *self.settings.write().await = settings;
    }

    /// A usable token: logs in when there is none or it expired, renews when it is due.
    pub(crate) async fn token(&self, http: &Http) -> Result<Token, Error> {
        let current = self.current.read().await.clone();
        match current {
            Some(t) if !t.expired() && !t.wants_renewal() => Ok(t),
            Some(t) if !t.expired() => self.renew_or_login(http, t).await,
            _ => self.relogin(http, None).await,
        }
    }

    /// Generation of the current token, if any; `relogin(Some(it))` then forces a new login.
    pub(crate) async fn generation(&self) -> Option<u64> {
        self.current.read().await.as_ref().map(|t| t.generation)
    }

    /// Logs in again unless another task already replaced token `seen` in the meantime.
    pub(crate) async fn relogin(&self, http: &Http, seen: Option<u64>) -> Result<Token, Error> {
        let mut generation = self.login_lock.lock().await;
        if let Some(t) = self.current.read().await.clone() {
            if seen.is_some_and(|g| g != t.generation)
                || (seen.is_none() && !t.expired() && !t.wants_renewal())
            {
                return Ok(t);
            }
        }
        *generation += 1;
        let token = self.login(http, *generation).await?;
        *self.current.write().await = Some(token.clone());
        Ok(token)
    }

    async fn renew_or_login(&self, http: &Http, token: Token) -> Result<Token, Error> {
        if token.renewable {
            match self.renew(http, &token).await {
                Ok(Some(renewed)) => return Ok(renewed),
                Ok(None) => tracing::info!("token reached its maximum TTL; logging in again"),
                Err(e) => {
                    tracing::warn!(error = %e, error_class = e.class(), "token renewal failed; logging in again")
                }
            }
        }
        let method_is_token = matches!(*self.settings.read().await, AuthSettings::Token { .. });
        if method_is_token && !token.expired() {
            // A static token cannot log in again; keep using it until it really expires.
            return Ok(token);
        }
        self.relogin(http, Some(token.generation)).await
    }

    /// `Ok(None)` when the renewal did not extend the lease meaningfully (max TTL reached).
    async fn renew(&self, http: &Http, token: &Token) -> Result<Option<Token>, Error> {
        let requested = token.ttl.unwrap_or_default().as_secs().max(60);
        let body: Option<AuthBody> = http
            .call(
                Operation::Renew,
                Method::POST,
                super::contract::RENEW_SELF.fixed(),
                Some(&token.secret),
                Some(&json!({ "increment": format!("{requested}s") })),
            )
            .await?;
        let info = body
            .ok_or_else(|| Error::Protocol("renew-self returned no auth block".into()))?
            .auth;
        let ttl = Duration::from_secs(info.lease_duration);
        let original = token.ttl.unwrap_or_default();
        if ttl < original / 3 {
            return Ok(None);
        }
        let mut guard = self.current.write().await;
        let renewed = Token {
            secret: token.secret.clone(),
            generation: token.generation,
            obtained: Instant::now(),
            ttl: Some(ttl),
            renewable: info.renewable,
        };
        if guard
            .as_ref()
            .is_some_and(|t| t.generation == token.generation)
        {
            *guard = Some(renewed.clone());
        }
        tracing::info!(ttl_seconds = ttl.as_secs(), "renewed OpenBao token");
        metrics::token_ttl(ttl);
        Ok(Some(renewed))
    }

    async fn login(&self, http: &Http, generation: u64) -> Result<Token, Error> {
        let settings = self.settings.read().await.clone();
        let method = settings.method_name();
        let result = match &settings {
            AuthSettings::Jwt {
                mount_path,
                role,
                jwt_file,
            } => {
                let jwt = read_secret_file("JWT file", jwt_file)?;
                let body = json!({ "role": role, "jwt": jwt.as_str() });
                self.login_call(http, &format!("auth/{mount_path}/login"), &body, generation)
                    .await
            }
            AuthSettings::Cert {
                mount_path, name, ..
            } => {
                let body = match name {
                    Some(n) => json!({ "name": n }),
                    None => json!({}),
                };
                self.login_call(http, &format!("auth/{mount_path}/login"), &body, generation)
                    .await
            }
            AuthSettings::Token { token_file } => {
                self.token_from_file(http, token_file, generation).await
            }
        };
        metrics::auth_login(method, if result.is_ok() { "success" } else { "failure" });
        match &result {
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
        result
    }

    async fn login_call(
        &self,
        http: &Http,
        path: &str,
        body: &serde_json::Value,
        generation: u64,
    ) -> Result<Token, Error> {
        let resp: Option<AuthBody> = http
            .call(Operation::Login, Method::POST, path, None, Some(body))
            .await?;
        let info = resp
            .ok_or_else(|| Error::Protocol("login returned no auth block".into()))?
            .auth;
        Ok(Token {
            secret: Arc::new(info.client_token),
            generation,
            obtained: Instant::now(),
            ttl: (info.lease_duration > 0).then(|| Duration::from_secs(info.lease_duration)),
            renewable: info.renewable,
        })
    }

    async fn token_from_file(
        &self,
        http: &Http,
        path: &std::path::Path,
        generation: u64,
    ) -> Result<Token, Error> {
        let raw = read_secret_file("token file", path)?;
        let secret = Arc::new(SecretString::from(raw.as_str()));
        let lookup: Option<LookupBody> = http
            .call(
                Operation::Lookup,
                Method::GET,
                super::contract::LOOKUP_SELF.fixed(),
                Some(&secret),
                None,
            )
            .await?;
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
}

fn read_secret_file(
    what: &'static str,
    path: &std::path::Path,
) -> Result<Zeroizing<String>, Error> {
    let raw =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| Error::Credential {
                what,
                path: path.to_path_buf(),
                source,
            })?,
        );
    let trimmed = Zeroizing::new(raw.trim().to_owned());
    if trimmed.is_empty() {
        return Err(Error::NoToken(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(trimmed)
}
