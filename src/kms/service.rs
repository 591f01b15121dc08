//! Adapter from the generated tonic service to `KeyService`, with per-call logs and metrics.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::{clip, validate, DecryptInput, KeyService, KmsError, API_VERSION};
use crate::deadline;
use crate::pb;
use crate::pb::key_management_service_server::KeyManagementService;
use crate::telemetry::metrics;

pub(crate) struct KmsAdapter<S> {
    inner: Arc<S>,
    /// `server.kms_timeout`: the longest any call may take, whatever the caller asks.
    budget: Duration,
}

impl<S> KmsAdapter<S> {
    pub(crate) fn new(inner: Arc<S>, budget: Duration) -> Self {
        Self { inner, budget }
    }

    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        let header = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok());
        deadline::for_call(header, self.budget)
    }
}

/// Counts and logs a call whose future was dropped before it finished: the caller's deadline
/// passed or it went away. Such calls are failures like any other, not silence.
struct Pending {
    method: &'static str,
    started: Instant,
    done: bool,
}

impl Pending {
    fn new(method: &'static str) -> Self {
        Self {
            method,
            started: Instant::now(),
            done: false,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            metrics::grpc_request(self.method, "Cancelled", self.started.elapsed());
            tracing::warn!(
                kms_method = self.method,
                error_class = "cancelled",
                latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                "kms call cancelled by the caller (deadline passed or connection closed)"
            );
        }
    }
}

/// Logs one finished call with the structured fields journald indexes (KMS_METHOD, KMS_UID, ...).
/// The client's uid and key_id are clipped to `MAX_ECHO_BYTES`.
fn finish<T>(
    method: &'static str,
    uid: &str,
    started: Instant,
    key_id: &str,
    result: &Result<T, KmsError>,
) {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (uid, key_id) = (clip(uid), clip(key_id));
    let (uid, key_id) = (uid.as_ref(), key_id.as_ref());
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
        Cancelled => "Cancelled",
        DeadlineExceeded => "DeadlineExceeded",
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
        let mut pending = Pending::new("Decrypt");
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        let key_id = req.key_id.clone();
        let input = DecryptInput {
            ciphertext: req.ciphertext,
            key_id: req.key_id,
            annotations: req.annotations,
        };
        let result = match validate::decrypt_input(&input) {
            Ok(()) => deadline::scope(deadline, self.inner.decrypt(input)).await,
            Err(e) => Err(e),
        };
        pending.done = true;
        finish("Decrypt", &req.uid, started, &key_id, &result);
        let mut plaintext = result?;
        // Moved, not copied: the bytes leave through tonic's encode buffer (docs/security.md).
        Ok(Response::new(pb::DecryptResponse {
            plaintext: std::mem::take(&mut *plaintext),
        }))
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let started = Instant::now();
        let mut pending = Pending::new("Encrypt");
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        let plaintext = zeroize::Zeroizing::new(req.plaintext);
        let result = match validate::plaintext(&plaintext) {
            Ok(()) => deadline::scope(deadline, self.inner.encrypt(&plaintext))
                .await
                .and_then(|r| validate::encrypt_reply(&r).map(|()| r)),
            Err(e) => Err(e),
        };
        pending.done = true;
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
