//! Adapter from the generated tonic service to `KeyService`, with per-call logs and metrics.
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::{validate, DecryptInput, KeyService, KmsError, API_VERSION};
use crate::pb;
use crate::pb::key_management_service_server::KeyManagementService;
use crate::telemetry::metrics;

pub(crate) struct KmsAdapter<S> {
    inner: Arc<S>,
}

impl<S> KmsAdapter<S> {
    pub(crate) fn new(inner: Arc<S>) -> Self {
        Self { inner }
    }
}

/// Logs one finished call with the structured fields journald indexes (KMS_METHOD, KMS_UID, ...).
fn finish<T>(
    method: &'static str,
    uid: &str,
    started: Instant,
    key_id: &str,
    result: &Result<T, KmsError>,
) {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let code = match result {
        Ok(_) => tonic::Code::Ok,
        Err(e) => e.code(),
    };
    metrics::grpc_request(method, code_name(code), started.elapsed());
    match result {
        Ok(_) => tracing::debug!(
            kms_method = method,
            kms_uid = uid,
            key_id,
            latency_ms,
            "kms call ok"
        ),
        Err(e) => tracing::warn!(
            kms_method = method,
            kms_uid = uid,
            key_id,
            error_class = e.class(),
            latency_ms,
            error = %e,
            "kms call failed"
        ),
    }
}

pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        InvalidArgument => "InvalidArgument",
        NotFound => "NotFound",
        FailedPrecondition => "FailedPrecondition",
        Unavailable => "Unavailable",
        Unauthenticated => "Unauthenticated",
        PermissionDenied => "PermissionDenied",
        Internal => "Internal",
        _ => "Other",
    }
}

#[tonic::async_trait]
impl<S: KeyService> KeyManagementService for KmsAdapter<S> {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let started = Instant::now();
        let reply = self.inner.status();
        metrics::grpc_request("Status", "OK", started.elapsed());
        Ok(Response::new(pb::StatusResponse {
            version: API_VERSION.to_owned(),
            healthz: reply.healthz,
            key_id: reply.key_id,
        }))
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let key_id = req.key_id.clone();
        let input = DecryptInput {
            ciphertext: req.ciphertext,
            key_id: req.key_id,
            annotations: req.annotations,
        };
        let result = match validate::decrypt_input(&input) {
            Ok(()) => self.inner.decrypt(input).await,
            Err(e) => Err(e),
        };
        finish("Decrypt", &req.uid, started, &key_id, &result);
        let plaintext = result?;
        Ok(Response::new(pb::DecryptResponse {
            plaintext: plaintext.to_vec(),
        }))
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let plaintext = zeroize::Zeroizing::new(req.plaintext);
        let result = match validate::plaintext(&plaintext) {
            Ok(()) => self
                .inner
                .encrypt(&plaintext)
                .await
                .and_then(|r| validate::encrypt_reply(&r).map(|()| r)),
            Err(e) => Err(e),
        };
        let key_id = result.as_ref().map(|r| r.key_id.as_str()).unwrap_or("");
        finish("Encrypt", &req.uid, started, key_id, &result);
        let reply = result?;
        Ok(Response::new(pb::EncryptResponse {
            ciphertext: reply.ciphertext,
            key_id: reply.key_id,
            annotations: reply.annotations,
        }))
    }
}
