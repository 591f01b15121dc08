//! Read-only diagnostics for `doctor`: a bare TLS handshake with the exact client configuration
//! the daemon uses, and what OpenBao says about the provider's own token.
use std::sync::Arc;
use std::time::Duration;

use ::http::Method;
use rustls::pki_types::ServerName;

use super::http::Operation;
use super::login::LookupBody;
use super::tls::from_settings;
use super::{Client, Error};
use crate::config::{AuthSettings, OpenBaoSettings};

/// What a successful handshake negotiated.
#[derive(Debug, Clone)]
pub(crate) struct Handshake {
    /// `host:port` connected to.
    pub(crate) endpoint: String,
    /// The name the server certificate was checked against.
    pub(crate) verified_name: String,
    pub(crate) protocol: String,
    pub(crate) cipher_suite: String,
}

/// Connects to `openbao.address` and completes a TLS handshake, verifying the server
/// certificate against `ca_file` (and `tls_server_name` when set), presenting the client
/// certificate for cert auth. Plain `http://` addresses have no TLS: `Ok(None)`.
pub(crate) async fn tls_handshake(
    openbao: &OpenBaoSettings,
    auth: &AuthSettings,
) -> Result<Option<Handshake>, Error> {
    let url = &openbao.address;
    if url.scheme() != "https" {
        return Ok(None);
    }
    let config = from_settings(openbao, auth)?;
    let host = url
        .host_str()
        .ok_or_else(|| Error::Tls(format!("openbao.address {url} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let endpoint = format!("{host}:{port}");
    // The URL host goes into SNI exactly as the client (conn.rs) sends it; the verifier applies
    // tls_server_name, so this proves the same check the daemon's requests pass.
    let sni = ServerName::try_from(host.clone())
        .map_err(|e| Error::Tls(format!("openbao.address host {host:?}: {e}")))?;
    let timeout = openbao.timeout;
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::Timeout(timeout))?
    .map_err(|e| Error::Unreachable(format!("TCP connect to {endpoint}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(timeout, connector.connect(sni, tcp))
        .await
        .map_err(|_| Error::Timeout(timeout))?
        .map_err(|e| {
            Error::Tls(format!(
                "handshake with {endpoint}: {}",
                crate::support::error_chain(&e)
            ))
        })?;
    let (_, session) = tls.get_ref();
    Ok(Some(Handshake {
        endpoint,
        verified_name: openbao.tls_server_name.clone().unwrap_or(host),
        protocol: session
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_owned(),
        cipher_suite: session
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown")
            .to_owned(),
    }))
}

/// The provider token as `auth/token/lookup-self` describes it (never the token itself).
#[derive(Debug, Clone)]
pub(crate) struct TokenInfo {
    /// Remaining TTL; `None` for a token that never expires.
    pub(crate) ttl: Option<Duration>,
    pub(crate) renewable: bool,
    pub(crate) policies: Vec<String>,
}

impl Client {
    /// Looks up the current token (logging in first when there is none).
    pub(crate) async fn token_info(&self) -> Result<TokenInfo, Error> {
        let body: LookupBody = self
            .authed(
                Operation::Lookup,
                Method::GET,
                super::contract::LOOKUP_SELF.fixed(),
                None,
            )
            .await?
            .ok_or_else(|| Error::Protocol("lookup-self returned no data".into()))?;
        let mut policies = body.data.policies;
        for p in body.data.identity_policies {
            if !policies.contains(&p) {
                policies.push(p);
            }
        }
        Ok(TokenInfo {
            ttl: (body.data.ttl > 0).then(|| Duration::from_secs(body.data.ttl)),
            renewable: body.data.renewable,
            policies,
        })
    }
}
