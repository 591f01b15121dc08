//! Serving the gRPC API on a unix socket, and binding that socket safely when systemd did not.
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::task::TaskTracker;

use super::authority::{Rewrite, MAX_FRAME_BYTES};
use super::conn::Conn;
use super::linger::Linger;
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
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    // Bound inside a private 0700 directory, given its mode there, then renamed into place:
    // the socket is never reachable with a wider mode than configured, not even for an instant.
    let private = parent.join(format!(".bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io_err(&private))?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = UnixListener::bind(&staged).map_err(io_err(&staged))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&staged))?;
        std::fs::rename(&staged, path).map_err(io_err(path))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Limits of the KMS server (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// In-flight calls may finish for this long after `shutdown`.
    pub drain: Duration,
    /// `server.kms_timeout`: no call runs longer, whatever its `grpc-timeout` says.
    pub kms_timeout: Duration,
    pub max_concurrent_streams: u32,
    /// A connection without traffic for this long is closed.
    pub idle_timeout: Duration,
}

/// Serves until `shutdown` resolves, then lets in-flight calls finish, and closed connections
/// linger (`linger`), for at most `limits.drain`.
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
    limits: Limits,
) -> Result<(), SocketError> {
    let drain = limits.drain;
    let lingering = TaskTracker::new();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = drain_tx.send(());
    };
    let svc = KeyManagementServiceServer::new(KmsAdapter::new(service, limits.kms_timeout))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Stated, not left to hyper's default: `Rewrite` re-emits header frames this large.
        .max_frame_size(MAX_FRAME_BYTES as u32)
        .add_service(svc)
        .serve_with_incoming_shutdown(
            incoming(
                listener,
                self_check,
                accept_after,
                limits.idle_timeout,
                lingering.clone(),
            ),
            signal,
        );
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => return res.map_err(|e| SocketError::Serve(e.to_string())),
        _ = drain_rx => {}
    }
    let drained = async {
        server
            .await
            .map_err(|e| SocketError::Serve(e.to_string()))?;
        // Closed connections still read what their clients send until those close (`linger`).
        lingering.close();
        lingering.wait().await;
        Ok(())
    };
    match tokio::time::timeout(drain, drained).await {
        Ok(res) => res,
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
    idle_timeout: Duration,
    lingering: TaskTracker,
) -> impl tokio_stream::Stream<Item = std::io::Result<Idle<Rewrite<Conn>>>> {
    let socket = Gated {
        gate: Some(Box::pin(accept_after)),
        inner: Accept {
            listener,
            pause: None,
            backoff: MIN_BACKOFF,
        },
    }
    .map(move |r| r.map(|s| Conn::Unix(Linger::new(s, lingering.token()))));
    let memory = ReceiverStream::new(self_check).map(|d| Ok(Conn::Memory(d)));
    socket
        .merge(memory)
        .map(move |r| r.map(|c| Idle::new(Rewrite::new(c), idle_timeout)))
}

const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections; when the process is out of file descriptors (EMFILE) or the system is
/// (ENFILE, ENOBUFS, ENOMEM), pauses accepting with a growing backoff instead of spinning on a
/// listener that stays readable. Other accept errors concern one connection and are skipped.
struct Accept {
    listener: UnixListener,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    backoff: Duration,
}

impl tokio_stream::Stream for Accept {
    type Item = std::io::Result<tokio::net::UnixStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(pause) = self.pause.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, _))) => {
                    self.backoff = MIN_BACKOFF;
                    return Poll::Ready(Some(Ok(stream)));
                }
                Poll::Ready(Err(e)) if out_of_resources(&e) => {
                    let wait = self.backoff;
                    tracing::warn!(error = %e, backoff_ms = wait.as_millis() as u64, "cannot accept KMS connections: out of file descriptors or memory; pausing");
                    self.backoff = (wait * 2).min(MAX_BACKOFF);
                    self.pause = Some(Box::pin(tokio::time::sleep(wait)));
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "accepting a KMS connection failed; continuing");
                }
            }
        }
    }
}

fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

/// A connection that reports EOF-by-timeout once it has had no traffic for `limit`, so
/// connections a client forgot do not hold descriptors forever.
pub(crate) struct Idle<C> {
    inner: C,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<C> Idle<C> {
    fn new(inner: C, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn touch(&mut self) {
        let next = tokio::time::Instant::now() + self.limit;
        self.timer.as_mut().reset(next);
    }
}

impl<C: tonic::transport::server::Connected> tonic::transport::server::Connected for Idle<C> {
    type ConnectInfo = C::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Idle<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if self.timer.as_mut().poll(cx).is_ready() {
                    tracing::debug!(
                        idle_seconds = self.limit.as_secs(),
                        "closing an idle KMS connection"
                    );
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "idle KMS connection closed (server.idle_timeout)",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Idle<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
