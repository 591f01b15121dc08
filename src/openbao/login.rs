//! The login request of each auth method (JWT read from its file at every login, cert over
//! mTLS, a token file checked with lookup-self) and OpenBao's answers to it.
use std::time::{Duration, Instant};

use ::http::Method;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::auth::Token;
use super::http::{Http, Operation};
use super::nodes::Nodes;
use super::request::{JsonBody, Request, TokenHeader};
use super::Error;
use crate::config::AuthSettings;
use crate::telemetry::metrics;

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

#[derive(Deserialize)]
pub(crate) struct AuthBody {
    pub(super) auth: AuthInfo,
}

#[derive(Deserialize)]
pub(super) struct AuthInfo {
    client_token: SecretString,
    #[serde(default)]
    pub(super) lease_duration: u64,
    #[serde(default)]
    pub(super) renewable: bool,
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

/// Counts (`openbao_kms_auth_logins_total`) and logs each login's outcome, every method alike.
pub(super) fn log_login(method: &'static str, result: &Result<Token, Error>) {
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
            tracing::warn!(method, error = %e, error_class = e.class().as_str(), "OpenBao login failed")
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
