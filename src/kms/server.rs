//! Serving the gRPC API on a unix socket, and binding that socket safely when systemd did not.
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::DuplexStream;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::StreamExt;

use super::conn::Conn;
use super::{KeyService, KmsAdapter};
use crate::pb::key_management_service_server::KeyManagementServiceServer;

/// Requests larger than this are refused by the transport before any handler runs.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket path {}: a provider is already serving there", .0.display())]
    InUse(PathBuf),
    #[error("socket path {} exists and is not a socket; refusing to remove it", .0.display())]
    NotASocket(PathBuf),
    #[error("socket path {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Binds `path` ourselves (no socket from systemd). A leftover socket file is removed only when
/// nothing accepts on it; a live peer or a non-socket file is an error.
pub fn bind_unix_socket(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SocketError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(io_err(path))?;
            }
            Err(e) => return Err(io_err(path)(e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    Ok(listener)
}

/// Serves until `shutdown` resolves, then lets in-flight calls finish for at most `drain`.
/// `self_check` feeds in-memory connections into the same server, so the watchdog can prove
/// the server answers without needing permission on the (root-owned) socket file.
/// Connections on the socket are accepted only once `accept_after` resolves: until then they
/// wait in the kernel's backlog (systemd holds the socket across restarts), so a client never
/// reaches a process that cannot encrypt yet. After `shutdown` nothing more is accepted, so
/// queued connections are left for the next process.
pub(crate) async fn serve<S: KeyService>(
    listener: UnixListener,
    service: Arc<S>,
    self_check: mpsc::Receiver<DuplexStream>,
    accept_after: impl Future<Output = ()> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> Result<(), SocketError> {
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = drain_tx.send(());
    };
    let svc = KeyManagementServiceServer::new(KmsAdapter::new(service))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let server = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming(listener, self_check, accept_after), signal);
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => return res.map_err(|e| SocketError::Serve(e.to_string())),
        _ = drain_rx => {}
    }
    match tokio::time::timeout(drain, &mut server).await {
        Ok(res) => res.map_err(|e| SocketError::Serve(e.to_string())),
        Err(_) => {
            tracing::warn!(
                drain_seconds = drain.as_secs_f64(),
                "in-flight KMS calls did not finish in time; exiting anyway"
            );
            Ok(())
        }
    }
}

fn incoming(
    listener: UnixListener,
    self_check: mpsc::Receiver<DuplexStream>,
    accept_after: impl Future<Output = ()> + Send + 'static,
) -> impl tokio_stream::Stream<Item = std::io::Result<Conn>> {
    let socket = Gated {
        gate: Some(Box::pin(accept_after)),
        inner: UnixListenerStream::new(listener),
    }
    .map(|r| r.map(Conn::Unix));
    let memory = ReceiverStream::new(self_check).map(|d| Ok(Conn::Memory(d)));
    socket.merge(memory)
}

/// A stream that yields nothing until `gate` resolves. It is pull-based on purpose: `accept()`
/// runs only when the server polls, so no connection is taken off the backlog and then dropped.
struct Gated<S> {
    gate: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    inner: S,
}

impl<S: tokio_stream::Stream + Unpin> tokio_stream::Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if let Some(gate) = self.gate.as_mut() {
            if gate.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.gate = None;
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
