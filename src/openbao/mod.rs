//! The OpenBao side: authentication, Transit encrypt/decrypt and key metadata over HTTPS.
mod answer;
mod auth;
mod budget;
mod conn;
pub(crate) mod contract;
mod diagnostics;
mod error;
mod expiry;
mod http;
mod login;
mod nodes;
mod pkcs11;
mod request;
mod throttle;
mod tls;
mod transit;

use ::http::Method;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use zeroize::Zeroizing;

pub(crate) use diagnostics::tls_handshake;
pub(crate) use error::{Error, ErrorClass};
pub(crate) use expiry::{credential_expiry, Credential};
pub(crate) use http::Operation;
pub(crate) use pkcs11::{inspect as inspect_pkcs11_key, Pkcs11Error};
pub(crate) use transit::{ciphertext_version, KeyMetadata, KeysConfig, MountInfo, ServerHealth};

use std::sync::Arc;

use auth::{Auth, Token};
use http::Http;
use nodes::Nodes;
use request::{JsonBody, Request};
use transit::{DataBody, DecryptData, EncryptData, RawKey};

use crate::config::{AuthSettings, OpenBaoSettings, TransitSettings};

#[derive(Serialize)]
struct EncryptRequest<'a> {
    plaintext: &'a str,
    associated_data: String,
    key_version: u32,
}

#[derive(Serialize)]
struct DecryptRequest<'a> {
    ciphertext: &'a str,
    associated_data: String,
}

#[derive(Serialize)]
struct CapabilitiesRequest<'a> {
    paths: &'a [String],
}

/// Object-safe "serialise me into a wiped buffer", so `authed` can retry with the same body.
mod erased {
    pub(crate) trait Body {
        fn json(&self) -> Result<super::JsonBody, super::Error>;
    }

    impl<T: serde::Serialize> Body for T {
        fn json(&self) -> Result<super::JsonBody, super::Error> {
            super::JsonBody::new(self)
        }
    }
}

/// `sys/mounts/<mount>`: newer servers wrap the answer in `data`, older ones do not.
fn mount_info(body: serde_json::Value) -> Result<MountInfo, Error> {
    let data = body.get("data").cloned().unwrap_or(body);
    serde_json::from_value(data).map_err(|e| Error::Protocol(format!("mount info: {e}")))
}

/// Every decoder of an OpenBao answer, fed the same bytes (`cargo fuzz`, fuzz/): none may panic.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_decoders(body: &[u8]) {
    if let Ok(b) = serde_json::from_slice::<DataBody<RawKey>>(body) {
        let _ = b.data.into_metadata();
    }
    if let Ok(b) = serde_json::from_slice::<DataBody<EncryptData>>(body) {
        let _ = ciphertext_version(&b.data.ciphertext);
    }
    if let Ok(b) = serde_json::from_slice::<DataBody<DecryptData>>(body) {
        let _ = b.data.bytes();
    }
    if let Ok(b) = serde_json::from_slice::<DataBody<KeysConfig>>(body) {
        let _ = b.data.disable_upsert;
    }
    let _ = serde_json::from_slice::<login::AuthBody>(body);
    let _ = serde_json::from_slice::<login::LookupBody>(body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let _ = mount_info(v);
    }
    let _ = answer::error_messages(body);
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = ciphertext_version(text);
    }
}

/// A Transit encryption result: the ciphertext as OpenBao returns it and the version it used.
#[derive(Debug, Clone)]
pub(crate) struct Encrypted {
    pub(crate) ciphertext: String,
}

/// Client for one OpenBao cluster (one or more nodes) and one Transit key.
pub(crate) struct Client {
    http: Arc<Http>,
    auth: Arc<Auth>,
    mount: String,
    key: String,
    /// The Transit paths of the per-call requests, rendered once.
    encrypt_path: String,
    decrypt_path: String,
    /// What the expiry gauge last showed; the probe loop refreshes it.
    expiry: std::sync::Mutex<expiry::ExpiryWatch>,
}

impl Client {
    /// `budget` bounds requests made outside a KMS call (probe loop, logins, CLI); inside one,
    /// the call's own deadline (`crate::deadline`) applies.
    pub(crate) fn new(
        openbao: &OpenBaoSettings,
        auth: &AuthSettings,
        transit: &TransitSettings,
        budget: std::time::Duration,
    ) -> Result<Self, Error> {
        Ok(Self {
            http: Arc::new(Http::new(openbao, auth, budget)?),
            auth: Arc::new(Auth::new(auth.clone())),
            mount: transit.mount_path.clone(),
            key: transit.key_name.clone(),
            encrypt_path: contract::ENCRYPT.render(&transit.mount_path, &transit.key_name),
            decrypt_path: contract::DECRYPT.render(&transit.mount_path, &transit.key_name),
            expiry: std::sync::Mutex::new(expiry::ExpiryWatch::default()),
        })
    }

    /// SIGHUP, all or nothing: builds the node clients (CA, client certificate, addresses) and
    /// logs in with the new credentials on the side, and only then swaps both in. On any error
    /// nothing changed and the previous client and token stay in use. `openbao` and `auth` are
    /// the settings `config::reloaded` keeps in effect (identity and connection cap as running).
    pub(crate) async fn reload(
        &self,
        openbao: &OpenBaoSettings,
        auth: &AuthSettings,
    ) -> Result<(), Error> {
        let nodes = Nodes::build(openbao, auth)?;
        let token = login::login_with(&self.http, &nodes, auth, 0).await?;
        self.http.install(nodes);
        self.auth.install(auth.clone(), token);
        self.expiry_watch().reloaded();
        tracing::info!(
            method = auth.method_name(),
            "logged in to OpenBao with the reloaded configuration"
        );
        Ok(())
    }

    /// Makes sure a token exists and renews it when due; called from the probe loop so that
    /// request paths rarely pay for a login.
    pub(crate) async fn maintain_token(&self) -> Result<Option<std::time::Duration>, Error> {
        Ok(self.auth.token(&self.http).await?.remaining())
    }

    /// Exports when the credential in use ends, reading it again only when it changed (a new
    /// JWT file, a reload), and warns once when that is within `margin`. No I/O beyond a `stat`
    /// of the JWT file while nothing changed.
    pub(crate) fn watch_credential_expiry(&self, margin: std::time::Duration) {
        let settings = self.auth.settings();
        self.expiry_watch()
            .check(&settings, margin, std::time::SystemTime::now());
    }

    fn expiry_watch(&self) -> std::sync::MutexGuard<'_, expiry::ExpiryWatch> {
        match self.expiry.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Forces a fresh login now, re-reading the credential files. On failure the previous
    /// token stays in use.
    pub(crate) async fn login(&self) -> Result<(), Error> {
        self.auth.relogin(&self.http).await.map(|_| ())
    }

    /// Runs `op` with a token; on 403 logs in once more and retries, since the token may have
    /// been revoked or expired early. A token that keeps getting 403 (a policy change) is not
    /// replaced more than once per 30 s, however many calls fail. `body` is serialised once, into
    /// a wiped buffer that both attempts share.
    async fn authed<T>(
        &self,
        operation: Operation,
        method: Method,
        path: &str,
        body: Option<&(dyn erased::Body + Sync)>,
    ) -> Result<Option<T>, Error>
    where
        T: serde::de::DeserializeOwned,
    {
        let mut request = Request::new(operation, method, path);
        if let Some(body) = body {
            request = request.body(body.json()?);
        }
        let token: Token = self.auth.token(&self.http).await?;
        match self.http.call(request.clone().token(&token.secret)).await {
            Err(Error::PermissionDenied(msg)) => {
                let Some(fresh) = self
                    .auth
                    .relogin_after_denial(&self.http, token.generation)
                    .await
                else {
                    return Err(Error::PermissionDenied(msg));
                };
                tracing::info!(operation = operation.as_str(), reason = %msg, "403 from OpenBao; logging in again and retrying once");
                let fresh = fresh?;
                self.http.call(request.token(&fresh.secret)).await
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
        let path = &self.encrypt_path;
        let b64 = Zeroizing::new(STANDARD.encode(plaintext));
        let body = EncryptRequest {
            plaintext: b64.as_str(),
            associated_data: STANDARD.encode(aad),
            key_version: version,
        };
        let resp: DataBody<EncryptData> = self
            .authed(Operation::Encrypt, Method::POST, path, Some(&body))
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
        let path = &self.decrypt_path;
        let body = DecryptRequest {
            ciphertext,
            associated_data: STANDARD.encode(aad),
        };
        let resp: DataBody<DecryptData> = self
            .authed(Operation::Decrypt, Method::POST, path, Some(&body))
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
        mount_info(body)
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
        let body = CapabilitiesRequest { paths };
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
