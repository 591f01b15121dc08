//! A writer that does what kube-apiserver does on a write, for tests and drills without an API
//! server: Status; on a new key_id a fresh 32-byte seed and one Encrypt whose key_id must match
//! Status; then per write a random HKDF info and nonce, AES-256-GCM with the etcd key as AAD,
//! the EncryptedObject, and the `k8s:enc:kms:v2:<provider>:` prefix.
use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

use super::crypto::{seal_with_key, seal_with_seed, DekSourceType, INFO_BYTES, NONCE_BYTES};
use super::parse::{check_provider_name, Envelope};
use super::WriteError;
use crate::kms::client::{CallError, KmsClient};
use crate::kms::code_name;
use crate::pb;

/// The seed (or legacy DEK) in use for one key_id, and its provider ciphertext.
struct Current {
    key_id: String,
    dek_source: Zeroizing<Vec<u8>>,
    encrypted: Vec<u8>,
    annotations: HashMap<String, Vec<u8>>,
}

pub struct Writer {
    client: KmsClient,
    provider_name: String,
    mode: DekSourceType,
    timeout: Duration,
    current: Option<Current>,
}

fn uid() -> String {
    format!("envelope-writer-{:016x}", OsRng.next_u64())
}

impl Writer {
    /// `mode` is the DEK source type to write: seed mode is what Kubernetes 1.29+ writes.
    pub fn new(
        client: KmsClient,
        provider_name: &str,
        mode: DekSourceType,
    ) -> Result<Self, WriteError> {
        check_provider_name(provider_name)?;
        Ok(Self {
            client,
            provider_name: provider_name.to_owned(),
            mode,
            timeout: Duration::from_secs(3),
            current: None,
        })
    }

    /// The key_id the last write used (None before the first write).
    pub fn key_id(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.key_id.as_str())
    }

    async fn call<T>(
        &self,
        call: &'static str,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, WriteError> {
        crate::kms::client::call(call, self.timeout, fut)
            .await
            .map_err(|e| match e {
                CallError::Timeout { call, timeout } => WriteError::Timeout { call, timeout },
                CallError::Failed { call, status } => WriteError::Kms {
                    call,
                    code: code_name(status.code()),
                    message: status.message().to_owned(),
                },
            })
    }

    /// Status, and a new seed + Encrypt when the key_id changed (kube-apiserver's state loop).
    async fn refresh(&mut self) -> Result<(), WriteError> {
        let mut c = self.client.clone();
        let status = self.call("Status", c.status(pb::StatusRequest {})).await?;
        if status.healthz != "ok" {
            return Err(WriteError::Unhealthy(status.healthz));
        }
        if self.key_id() == Some(status.key_id.as_str()) {
            return Ok(());
        }
        let mut dek_source = Zeroizing::new(vec![0u8; 32]);
        OsRng.fill_bytes(&mut dek_source);
        let req = pb::EncryptRequest {
            plaintext: dek_source.to_vec(),
            uid: uid(),
        };
        let enc = self.call("Encrypt", c.encrypt(req)).await?;
        if enc.key_id != status.key_id {
            return Err(WriteError::KeyIdMismatch {
                status: status.key_id,
                encrypt: enc.key_id,
            });
        }
        self.current = Some(Current {
            key_id: enc.key_id,
            dek_source,
            encrypted: enc.ciphertext,
            annotations: enc.annotations,
        });
        Ok(())
    }

    /// Returns the exact bytes kube-apiserver would store at `etcd_key` for `plaintext`.
    pub async fn write(&mut self, etcd_key: &str, plaintext: &[u8]) -> Result<Vec<u8>, WriteError> {
        self.refresh().await?;
        let Some(cur) = self.current.as_ref() else {
            return Err(WriteError::Unhealthy("no key_id yet".into()));
        };
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng.fill_bytes(&mut nonce);
        let encrypted_data = match self.mode {
            DekSourceType::HkdfSha256XNonceAesGcmSeed => {
                let mut info = [0u8; INFO_BYTES];
                OsRng.fill_bytes(&mut info);
                seal_with_seed(
                    &cur.dek_source,
                    &info,
                    &nonce,
                    etcd_key.as_bytes(),
                    plaintext,
                )?
            }
            DekSourceType::AesGcmKey => {
                seal_with_key(&cur.dek_source, &nonce, etcd_key.as_bytes(), plaintext)?
            }
        };
        let env = Envelope {
            provider_name: self.provider_name.clone(),
            key_id: cur.key_id.clone(),
            dek_source_type: self.mode,
            encrypted_dek_source: cur.encrypted.clone(),
            annotations: cur.annotations.clone(),
            encrypted_data,
        };
        Ok(env.to_bytes()?)
    }
}
