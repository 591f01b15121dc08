//! The OpenBao side: authentication, Transit encrypt/decrypt and key metadata over HTTPS.
mod auth;
pub(crate) mod contract;
mod diagnostics;
mod error;
mod http;
mod pkcs11;
mod tls;
mod transit;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::Method;
use serde_json::json;
use zeroize::Zeroizing;

pub(crate) use diagnostics::tls_handshake;
pub(crate) use error::Error;
pub(crate) use http::Operation;
pub(crate) use pkcs11::{inspect as inspect_pkcs11_key, Pkcs11Error};
pub(crate) use transit::{ciphertext_version, KeyMetadata, KeysConfig, MountInfo, ServerHealth};

use auth::{Auth, Token};
use http::Http;
use transit::{DataBody, DecryptData, EncryptData, RawKey};

use crate::config::{AuthSettings, OpenBaoSettings, TransitSettings};

/// A Transit encryption result: the ciphertext as OpenBao returns it and the version it used.
#[derive(Debug, Clone)]
pub(crate) struct Encrypted {
    pub(crate) ciphertext: String,
}

/// Client for one OpenBao instance and one Transit key.
pub(crate) struct Client {
    http: Http,
    auth: Auth,
    mount: String,
    key: String,
}

impl Client {
    pub(crate) fn new(
        openbao: &OpenBaoSettings,
        auth: &AuthSettings,
        transit: &TransitSettings,
    ) -> Result<Self, Error> {
        Ok(Self {
            http: Http::new(openbao, auth)?,
            auth: Auth::new(auth.clone()),
            mount: transit.mount_path.clone(),
            key: transit.key_name.clone(),
        })
    }

    /// SIGHUP: re-read TLS files and auth settings; the next login re-reads the JWT.
    pub(crate) async fn reload(
        &self,
        openbao: &OpenBaoSettings,
        auth: &AuthSettings,
    ) -> Result<(), Error> {
        self.http.reload(openbao, auth)?;
        self.auth.set_settings(auth.clone()).await;
        Ok(())
    }

    /// Makes sure a token exists and renews it when due; called from the probe loop so that
    /// request paths rarely pay for a login.
    pub(crate) async fn maintain_token(&self) -> Result<Option<std::time::Duration>, Error> {
        Ok(self.auth.token(&self.http).await?.remaining())
    }

    /// Forces a fresh login now, re-reading the credential files (SIGHUP). On failure the
    /// previous token stays in use.
    pub(crate) async fn login(&self) -> Result<(), Error> {
        let seen = self.auth.generation().await;
        self.auth.relogin(&self.http, seen).await.map(|_| ())
    }

    /// Runs `op` with a token; on 403 logs in once more and retries, since the token may have
    /// been revoked or expired early.
    async fn authed<T>(
        &self,
        operation: Operation,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Option<T>, Error>
    where
        T: serde::de::DeserializeOwned,
    {
        let token: Token = self.auth.token(&self.http).await?;
        match self
            .http
            .call(operation, method.clone(), path, Some(&token.secret), body)
            .await
        {
            Err(Error::PermissionDenied(msg)) => {
                tracing::info!(operation = operation.as_str(), reason = %msg, "403 from OpenBao; logging in again and retrying once");
                let fresh = self
                    .auth
                    .relogin(&self.http, Some(token.generation))
                    .await?;
                self.http
                    .call(operation, method, path, Some(&fresh.secret), body)
                    .await
            }
            other => other,
        }
    }

    pub(crate) async fn read_key(&self) -> Result<KeyMetadata, Error> {
        let path = contract::KEY.render(&self.mount, &self.key);
        let body: DataBody<RawKey> = self
            .authed(Operation::ReadKey, Method::GET, &path, None)
            .await?
            .ok_or_else(|| Error::Protocol("key read returned no data".into()))?;
        body.data.into_metadata()
    }

    /// Encrypts with an explicit key version, so a rotation in OpenBao never changes which
    /// version (and so which key_id) a write uses before the provider has promoted it.
    pub(crate) async fn encrypt(
        &self,
        plaintext: &[u8],
        aad: &[u8],
        version: u32,
    ) -> Result<Encrypted, Error> {
        let path = contract::ENCRYPT.render(&self.mount, &self.key);
        let b64 = Zeroizing::new(STANDARD.encode(plaintext));
        let body = json!({
            "plaintext": b64.as_str(),
            "associated_data": STANDARD.encode(aad),
            "key_version": version,
        });
        let resp: DataBody<EncryptData> = self
            .authed(Operation::Encrypt, Method::POST, &path, Some(&body))
            .await?
            .ok_or_else(|| Error::Protocol("encrypt returned no data".into()))?;
        let claimed = ciphertext_version(&resp.data.ciphertext).ok_or_else(|| {
            Error::Protocol("encrypt returned a ciphertext without a vault:v<N>: prefix".into())
        })?;
        if claimed != version || (resp.data.key_version != 0 && resp.data.key_version != version) {
            return Err(Error::Protocol(format!(
                "asked to encrypt with version {version} but OpenBao used version {claimed}"
            )));
        }
        Ok(Encrypted {
            ciphertext: resp.data.ciphertext,
        })
    }

    pub(crate) async fn decrypt(
        &self,
        ciphertext: &str,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let path = contract::DECRYPT.render(&self.mount, &self.key);
        let body = json!({ "ciphertext": ciphertext, "associated_data": STANDARD.encode(aad) });
        let resp: DataBody<DecryptData> = self
            .authed(Operation::Decrypt, Method::POST, &path, Some(&body))
            .await?
            .ok_or_else(|| Error::Protocol("decrypt returned no data".into()))?;
        resp.data.bytes()
    }

    pub(crate) async fn read_mount(&self) -> Result<MountInfo, Error> {
        let path = contract::MOUNT.render(&self.mount, &self.key);
        let body: serde_json::Value = self
            .authed(Operation::ReadMount, Method::GET, &path, None)
            .await?
            .ok_or_else(|| Error::Protocol("mount read returned no data".into()))?;
        // Newer servers wrap the answer in `data`, older ones do not.
        let data = body.get("data").cloned().unwrap_or(body);
        serde_json::from_value(data).map_err(|e| Error::Protocol(format!("mount info: {e}")))
    }

    pub(crate) async fn read_keys_config(&self) -> Result<KeysConfig, Error> {
        let path = contract::KEYS_CONFIG.render(&self.mount, &self.key);
        let body: DataBody<KeysConfig> = self
            .authed(Operation::ReadKeysConfig, Method::GET, &path, None)
            .await?
            .ok_or_else(|| Error::Protocol("keys config returned no data".into()))?;
        Ok(body.data)
    }

    /// Capabilities of the provider's own token on each path (least-privilege check).
    pub(crate) async fn capabilities(
        &self,
        paths: &[String],
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, Error> {
        let body = json!({ "paths": paths });
        let resp: serde_json::Value = self
            .authed(
                Operation::Capabilities,
                Method::POST,
                "sys/capabilities-self",
                Some(&body),
            )
            .await?
            .ok_or_else(|| Error::Protocol("capabilities-self returned no data".into()))?;
        let data = resp.get("data").unwrap_or(&resp);
        let mut out = std::collections::BTreeMap::new();
        for p in paths {
            let caps = data
                .get(p)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            out.insert(p.clone(), caps);
        }
        Ok(out)
    }

    pub(crate) async fn health(&self) -> Result<ServerHealth, Error> {
        Ok(self
            .http
            .status_of(Operation::Health, "sys/health")
            .await?
            .into())
    }
}
