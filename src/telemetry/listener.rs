//! The telemetry listeners' accept loop, bounded so that a local client cannot take the file
//! descriptors the KMS socket, OpenBao connections and the key registry need: at most
//! `telemetry.max_connections` open connections (one more is closed as soon as it is accepted,
//! never queued), a request head must arrive within `HEADER_READ_TIMEOUT` (also between
//! keep-alive requests, so idle connections close), every connection is closed after
//! `CONNECTION_LIFETIME`, and accept errors such as EMFILE pause the loop instead of spinning.
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::metrics;

/// A request head must be complete this long after the connection opened or the previous
/// response was sent; hyper closes the connection otherwise.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection stays open, kept-alive or not (a client that never reads its
/// response would otherwise hold its slot).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// What a connection asked to close (lifetime reached, or shutdown) gets to finish a response.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Pauses after an accept error that is not about one connection (EMFILE, ENFILE, ENOBUFS):
/// doubling from the first to the longest, reset by the next accepted connection.
const ACCEPT_PAUSE_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Shed connections and accept errors are logged at most this often (with a count).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` resolves, then asks open connections to close
/// and waits for them (bounded by `CLOSE_GRACE`).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let mut pause = ACCEPT_PAUSE_FIRST;
    let mut shed = Throttled::new();
    let mut failed = Throttled::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                pause = ACCEPT_PAUSE_FIRST;
                stream
            }
            Err(e) if about_one_connection(&e) => continue,
            Err(e) => {
                metrics::http_accept_error();
                if let Some(count) = failed.note() {
                    tracing::warn!(error = %e, count, pause_ms = pause.as_millis() as u64, "telemetry listener cannot accept connections; pausing");
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(connection(stream, router.clone(), slot, closing_rx.clone()));
            }
            Err(_) => {
                // Dropped here: closed at once, so it holds no descriptor of ours.
                drop(stream);
                metrics::http_connection_shed();
                if let Some(count) = shed.note() {
                    tracing::warn!(
                        max_connections,
                        count,
                        "telemetry listener full; closing new connections at once"
                    );
                }
            }
        }
    }
    closing.send_replace(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(CLOSE_GRACE * 2, slots.acquire_many(all)).await;
}

/// Errors that end one incoming connection only; the listener itself is fine.
fn about_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// One HTTP/1.1 connection, holding its slot until it ends.
async fn connection(
    stream: TcpStream,
    router: Router,
    _slot: OwnedSemaphorePermit,
    mut closing: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        router.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => None,
        _ = closing.wait_for(|c| *c) => None,
    };
    match ended {
        // Header timeouts, resets and clients that went away: nothing to report.
        Some(r) => {
            if let Err(e) = r {
                tracing::trace!(error = %e, "telemetry connection ended");
            }
        }
        None => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        }
    }
}

/// Counts events and says when to log them: the first at once, then at most every `LOG_EVERY`.
struct Throttled {
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn new() -> Self {
        Self {
            last: None,
            count: 0,
        }
    }

    /// `Some(events since the last line)` when a line is due.
    fn note(&mut self) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_logs_the_first_event_then_counts_quietly() {
        let mut t = Throttled::new();
        assert_eq!(t.note(), Some(1));
        assert_eq!(t.note(), None);
        assert_eq!(t.note(), None);
        t.last = Instant::now().checked_sub(LOG_EVERY);
        assert_eq!(t.note(), Some(3));
    }

    #[test]
    fn only_per_connection_errors_skip_the_pause() {
        assert!(about_one_connection(
            &io::ErrorKind::ConnectionAborted.into()
        ));
        // EMFILE and ENFILE: the process or the host is out of descriptors.
        assert!(!about_one_connection(&io::Error::from_raw_os_error(24)));
        assert!(!about_one_connection(&io::Error::from_raw_os_error(23)));
    }
}
