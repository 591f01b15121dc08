//! Closing a KMS connection without cutting off a client that is still writing.
//!
//! After a graceful shutdown h2 sends its final GOAWAY, shuts down its write side and drops the
//! connection. A client that queued a new call just before it read that GOAWAY writes the call
//! after the close, and the write fails with EPIPE; grpc-core then fails every call on the
//! connection with `UNAVAILABLE: Stream removed (sendmsg: Broken pipe)` instead of retrying the
//! refused one. So a dropped connection keeps reading (and discarding) until the client closes
//! its side or `LINGER` passes, as HTTP servers do with a lingering close.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio_util::task::task_tracker::TaskTrackerToken;
use zeroize::Zeroize;

/// A client that read the GOAWAY closes at once; this only bounds one that does not.
const LINGER: Duration = Duration::from_secs(1);

/// A unix-socket connection that lingers when dropped. Its tracker token is held until the
/// lingering ends, so the server's drain can wait for it before the process exits (an exit
/// closes the socket just like a drop).
pub(crate) struct Linger {
    stream: Option<UnixStream>,
    token: Option<TaskTrackerToken>,
}

impl Linger {
    pub(crate) fn new(stream: UnixStream, token: TaskTrackerToken) -> Self {
        Self {
            stream: Some(stream),
            token: Some(token),
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut UnixStream>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        let (Some(stream), Ok(runtime)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let token = self.token.take();
        runtime.spawn(async move {
            linger(stream).await;
            drop(token);
        });
    }
}

async fn linger(mut stream: UnixStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    sink.zeroize();
}

impl AsyncRead for Linger {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Linger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
