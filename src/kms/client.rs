//! A KMS v2 client over the unix socket, as kube-apiserver dials it (h2c, authority localhost).
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pb::key_management_service_client::KeyManagementServiceClient;

pub type KmsClient = KeyManagementServiceClient<Channel>;

pub async fn connect(path: &Path) -> Result<KmsClient, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(KeyManagementServiceClient::new(channel))
}

/// A client whose connections are in-memory pipes handed to the server's `self_check` channel:
/// used by the watchdog to call Status through the real server stack.
pub(crate) fn connect_in_memory(
    to_server: tokio::sync::mpsc::Sender<tokio::io::DuplexStream>,
) -> KmsClient {
    let channel = Endpoint::from_static("http://localhost").connect_with_connector_lazy(
        tower::service_fn(move |_: Uri| {
            let tx = to_server.clone();
            async move {
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                tx.send(theirs).await.map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "KMS server stopped")
                })?;
                Ok::<_, std::io::Error>(TokioIo::new(ours))
            }
        }),
    );
    KeyManagementServiceClient::new(channel)
}

/// Why one KMS call made by a tool (probe, verify-etcd-value, the testkit writer) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("{call} timed out after {}", humantime::format_duration(*.timeout))]
    Timeout {
        call: &'static str,
        timeout: std::time::Duration,
    },
    #[error("{call} failed: {} {}", super::code_name(.status.code()), .status.message())]
    Failed {
        call: &'static str,
        status: tonic::Status,
    },
}

/// One KMS call with the tool's per-call deadline, as kube-apiserver bounds its own calls.
pub(crate) async fn call<T>(
    call: &'static str,
    timeout: std::time::Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(CallError::Timeout { call, timeout }),
        Ok(Err(status)) => Err(CallError::Failed { call, status }),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}
