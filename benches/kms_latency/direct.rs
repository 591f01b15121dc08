//! The baseline: the same Transit calls the provider makes, sent straight to OpenBao with the
//! provider's client stack (reqwest + rustls/ring, HTTP/1.1 keep-alive, the same headers and
//! JSON body, a token from the same JWT role), as a plain application would.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

pub struct Direct {
    http: reqwest::Client,
    token: reqwest::header::HeaderValue,
    encrypt_url: String,
    decrypt_url: String,
}

#[derive(Serialize)]
struct DecryptBody<'a> {
    ciphertext: &'a str,
    associated_data: &'a str,
}

#[derive(Serialize)]
struct EncryptBody<'a> {
    plaintext: &'a str,
    associated_data: &'a str,
    key_version: u32,
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

#[derive(Deserialize)]
struct Plaintext {
    plaintext: String,
}

#[derive(Deserialize)]
struct Ciphertext {
    ciphertext: String,
}

#[derive(Deserialize)]
struct Login {
    auth: LoginAuth,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: String,
}

/// The TLS config the provider builds (src/openbao/tls.rs, not public): ring, safe default
/// protocol versions, the OpenBao CA as the only root, no client certificate.
fn tls_config(ca_file: &Path) -> rustls::ClientConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pem = std::fs::read(ca_file).expect("read the OpenBao CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The reqwest client as src/openbao/http.rs builds it.
pub fn client(ca_file: Option<&Path>, timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder();
    if let Some(ca) = ca_file {
        b = b.use_preconfigured_tls(tls_config(ca));
    }
    b.timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(2))
        .no_proxy()
        .user_agent(concat!("bao-kms-provider/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("HTTP client")
}

/// What the provider does before READY=1, done by a plain client from nothing: a fresh client
/// (new connection, TLS handshake), JWT login, key metadata read, then an encrypt and a decrypt
/// (the deep probe). Returns the wall time; the baseline of exec -> READY=1, because an idle
/// OpenBao answers its first requests far slower than a busy one.
pub async fn startup_sequence(addr: &str, ca_file: Option<&Path>, jwt_file: &Path) -> Duration {
    let started = std::time::Instant::now();
    let d = Direct::login(addr, ca_file, jwt_file).await;
    let resp = d
        .http
        .get(format!("{addr}/v1/transit/keys/k8s-etcd"))
        .header("X-Vault-Token", d.token.clone())
        .send()
        .await
        .expect("key read");
    assert!(resp.status().is_success(), "key read: {}", resp.status());
    resp.bytes().await.expect("key read body");
    let aad = STANDARD.encode(b"bench-startup");
    let c: Ciphertext = d
        .post(
            &d.encrypt_url,
            &EncryptBody {
                plaintext: &STANDARD.encode([0u8; 32]),
                associated_data: &aad,
                key_version: 1,
            },
        )
        .await
        .expect("startup encrypt");
    d.decrypt(&c.ciphertext, &aad)
        .await
        .expect("startup decrypt");
    started.elapsed()
}

impl Direct {
    /// Logs in with the provider's JWT role, so OpenBao evaluates the same policy per call.
    pub async fn login(addr: &str, ca_file: Option<&Path>, jwt_file: &Path) -> Direct {
        let http = client(ca_file, Duration::from_secs(2));
        let jwt = std::fs::read_to_string(jwt_file).expect("read the JWT");
        let resp = http
            .post(format!("{addr}/v1/auth/jwt/login"))
            .json(&serde_json::json!({ "role": "bao-kms-provider", "jwt": jwt.trim() }))
            .send()
            .await
            .expect("JWT login");
        assert!(resp.status().is_success(), "JWT login: {}", resp.status());
        let login: Login = resp.json().await.expect("login answer");
        let mut token =
            reqwest::header::HeaderValue::from_str(&login.auth.client_token).expect("token");
        token.set_sensitive(true);
        Direct {
            http,
            token,
            encrypt_url: format!("{addr}/v1/transit/encrypt/k8s-etcd"),
            decrypt_url: format!("{addr}/v1/transit/decrypt/k8s-etcd"),
        }
    }

    async fn post<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<T, String> {
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let resp = self
            .http
            .post(url)
            .header("X-Vault-Token", self.token.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        }
        serde_json::from_slice::<Data<T>>(&bytes)
            .map(|d| d.data)
            .map_err(|e| e.to_string())
    }

    /// Transit decrypt of `ciphertext` with `aad_b64`; returns the plaintext bytes' length.
    pub async fn decrypt(&self, ciphertext: &str, aad_b64: &str) -> Result<usize, String> {
        let p: Plaintext = self
            .post(
                &self.decrypt_url,
                &DecryptBody {
                    ciphertext,
                    associated_data: aad_b64,
                },
            )
            .await?;
        STANDARD
            .decode(p.plaintext)
            .map(|v| v.len())
            .map_err(|e| e.to_string())
    }

    pub async fn encrypt(
        &self,
        plaintext_b64: &str,
        aad_b64: &str,
        key_version: u32,
    ) -> Result<usize, String> {
        let c: Ciphertext = self
            .post(
                &self.encrypt_url,
                &EncryptBody {
                    plaintext: plaintext_b64,
                    associated_data: aad_b64,
                    key_version,
                },
            )
            .await?;
        Ok(c.ciphertext.len())
    }
}
