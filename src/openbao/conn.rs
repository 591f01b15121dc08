//! Keep-alive HTTP/1.1 connections to one OpenBao node, each polled by the task that sends on it.
//!
//! A pooled client (reqwest over hyper-util) runs every connection as its own spawned task, so
//! each request crosses threads twice (caller → connection task → caller): about two futex
//! wake-ups and a fifth of the provider's CPU per Decrypt went to that. Here the caller drives
//! the connection itself while it waits for its answer, and an idle connection is not polled
//! at all; it is checked for a close by the server when it is taken out of the pool.
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ::http::header::{HeaderMap, HeaderValue, HOST, USER_AGENT};
use ::http::StatusCode;
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use reqwest::Url;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use super::Error;
use crate::support::{read_capped, ReadError};

/// A request body: one buffer handed over whole (a wiped `JsonBody`, or nothing).
pub(crate) type Body = Full<Bytes>;

const USER_AGENT_VALUE: &str = concat!("bao-kms-provider/", env!("CARGO_PKG_VERSION"));

/// An unused connection older than this is closed rather than reused (as reqwest did).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why an exchange gave no response. Display names the step; the cause is the source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("TCP connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TCP connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS handshake with {endpoint}")]
    Tls {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {endpoint}")]
    Http {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("response over {0} bytes")]
    TooLarge(usize),
}

/// A finished exchange: status, headers and the whole body (in a wiped buffer).
pub(crate) struct Exchange {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Zeroizing<Vec<u8>>,
}

/// Where a node is reached and how its connections are made.
pub(crate) struct Pool {
    /// `host:port`, for messages.
    endpoint: String,
    target: Target,
    host: HeaderValue,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    max_idle: usize,
    /// Most recently used last; the oldest (front) expire first.
    idle: Mutex<std::collections::VecDeque<Conn>>,
}

enum Target {
    Addr(SocketAddr),
    Name(String, u16),
}

struct Conn {
    sender: http1::SendRequest<Body>,
    link: Link,
    idle_since: Instant,
}

/// The connection's read/write side, polled only while someone waits on it.
struct Link {
    io: http1::Connection<TokioIo<Stream>, Body>,
    /// The connection future finished (closed by either side): never reused.
    ended: bool,
    /// Why it finished, when it failed: the cause shown for the call it ended.
    error: Option<hyper::Error>,
}

/// `drive`: the connection finished while the future still waited.
struct Ended;

impl Pool {
    /// `tls` is used for `https` URLs only; plain `http` URLs connect without it.
    pub(crate) fn new(
        url: &Url,
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Result<Self, Error> {
        let raw_host = url
            .host_str()
            .ok_or_else(|| Error::Protocol(format!("OpenBao node {url} has no host")))?;
        let host = raw_host.trim_start_matches('[').trim_end_matches(']');
        let port = url
            .port_or_known_default()
            .ok_or_else(|| Error::Protocol(format!("OpenBao node {url} has no port")))?;
        let target = match host.parse::<IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
            Err(_) => Target::Name(host.to_owned(), port),
        };
        let header = match url.port() {
            Some(p) => format!("{raw_host}:{p}"),
            None => raw_host.to_owned(),
        };
        let host_header = HeaderValue::from_str(&header)
            .map_err(|_| Error::Protocol(format!("OpenBao node {url}: host is not a header")))?;
        let tls = match url.scheme() {
            "https" => {
                // SNI is the URL's host, as any HTTPS client sends it; `tls_server_name` is
                // applied by the certificate verifier in `tls`.
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| Error::Tls(format!("OpenBao node host {host:?}: {e}")))?;
                Some((
                    tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)),
                    name,
                ))
            }
            _ => None,
        };
        Ok(Self {
            endpoint: if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            target,
            host: host_header,
            tls,
            connect_timeout,
            max_idle,
            idle: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    /// Sends `req` (origin-form URI; Host and User-Agent are added here) and reads the whole
    /// response body, refusing more than `max` bytes. A kept-alive connection that the server
    /// closed meanwhile is replaced by a fresh one without failing the call.
    pub(crate) async fn send(
        &self,
        mut req: hyper::Request<Body>,
        max: usize,
    ) -> Result<Exchange, SendError> {
        let headers = req.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match drive(&mut conn.link, pin!(conn.sender.ready())).await {
                Ok(Ok(())) => {}
                _ if reused => continue,
                Ok(Err(e)) => return Err(self.http_error(conn.link.error.take().unwrap_or(e))),
                Err(Ended) => return Err(self.closed(conn.link.error.take())),
            }
            let mut sending = pin!(conn.sender.try_send_request(req));
            let sent = match drive(&mut conn.link, sending.as_mut()).await {
                Ok(sent) => sent,
                Err(Ended) => {
                    let cause = conn.link.error.take();
                    // Dropping the connection answers every request it still holds.
                    drop(conn);
                    match sending.await {
                        Ok(_) => return Err(self.closed(cause)),
                        Err(mut e) => match e.take_message() {
                            Some(back) if reused => {
                                req = back;
                                continue;
                            }
                            _ => return Err(self.http_error(cause.unwrap_or(e.into_error()))),
                        },
                    }
                }
            };
            let resp = match sent {
                Ok(resp) => resp,
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send again on another connection.
                    Some(back) if reused => {
                        req = back;
                        continue;
                    }
                    _ => {
                        let cause = conn.link.error.take();
                        return Err(self.http_error(cause.unwrap_or(e.into_error())));
                    }
                },
            };
            let (parts, body) = resp.into_parts();
            let mut buf = Zeroizing::new(Vec::new());
            let (read, conn, cause) = {
                let mut reading = pin!(read_capped(body, max, &mut buf));
                match drive(&mut conn.link, reading.as_mut()).await {
                    Ok(read) => (read, Some(conn), None),
                    Err(Ended) => {
                        let cause = conn.link.error.take();
                        drop(conn);
                        (reading.await, None, cause)
                    }
                }
            };
            match read {
                Ok(()) => {}
                Err(ReadError::TooLarge) => return Err(SendError::TooLarge(max)),
                Err(ReadError::Transport(source)) => {
                    return Err(SendError::Http {
                        endpoint: self.endpoint.clone(),
                        source: cause.map_or(source, |c| Box::new(c)),
                    })
                }
            }
            if let Some(conn) = conn {
                self.checkin(conn);
            }
            return Ok(Exchange {
                status: parts.status,
                headers: parts.headers,
                body: buf,
            });
        }
    }

    /// The connection ended under a call: its own error when it had one.
    fn closed(&self, cause: Option<hyper::Error>) -> SendError {
        SendError::Http {
            endpoint: self.endpoint.clone(),
            source: match cause {
                Some(e) => Box::new(e),
                None => "the connection closed".into(),
            },
        }
    }

    /// TCP to the node: every address its name resolves to, in order, each with an equal share
    /// of what is left of `connect_timeout`, so an address that drops packets (an IPv6 route
    /// that goes nowhere) cannot use the whole budget before the next one is tried.
    async fn connect_tcp(&self) -> Result<TcpStream, SendError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let timed_out = || SendError::ConnectTimeout(self.endpoint.clone());
        let addrs: Vec<SocketAddr> = match &self.target {
            Target::Addr(addr) => vec![*addr],
            Target::Name(host, port) => {
                tokio::time::timeout_at(deadline, tokio::net::lookup_host((host.as_str(), *port)))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|source| SendError::Connect {
                        endpoint: self.endpoint.clone(),
                        source,
                    })?
                    .collect()
            }
        };
        let mut last = None;
        for (i, addr) in addrs.iter().enumerate() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
            match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => return Ok(tcp),
                Ok(Err(source)) => {
                    last = Some(SendError::Connect {
                        endpoint: addr.to_string(),
                        source,
                    })
                }
                Err(_) => last = Some(SendError::ConnectTimeout(addr.to_string())),
            }
        }
        Err(last.unwrap_or_else(|| SendError::Connect {
            endpoint: self.endpoint.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolved to no address",
            ),
        }))
    }

    fn http_error(&self, e: hyper::Error) -> SendError {
        SendError::Http {
            endpoint: self.endpoint.clone(),
            source: Box::new(e),
        }
    }

    /// The most recently used idle connection the server has not closed, if any.
    fn checkout(&self) -> Option<Conn> {
        loop {
            let mut expired = Vec::new();
            let taken = {
                let mut idle = match self.idle.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                while idle
                    .front()
                    .is_some_and(|c| c.idle_since.elapsed() >= IDLE_TIMEOUT)
                {
                    expired.extend(idle.pop_front());
                }
                idle.pop_back()
            };
            // Closing sockets is a syscall each: not under the lock.
            drop(expired);
            let mut conn = taken?;
            // One poll without a waker reads a pending close (EOF) or error; an idle, open
            // connection stays Pending. Nothing here waits.
            let mut cx = Context::from_waker(Waker::noop());
            if conn.sender.is_closed() || conn.link.io.poll_without_shutdown(&mut cx).is_ready() {
                continue;
            }
            return Some(conn);
        }
    }

    fn checkin(&self, mut conn: Conn) {
        if conn.link.ended || conn.sender.is_closed() {
            return;
        }
        conn.idle_since = Instant::now();
        let mut idle = match self.idle.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Full: the oldest goes, the one just used (most likely still open) stays.
        let evicted = if idle.len() >= self.max_idle {
            idle.pop_front()
        } else {
            None
        };
        if self.max_idle > 0 {
            idle.push_back(conn);
        }
        drop(idle);
        drop(evicted);
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let tcp = self.connect_tcp().await?;
        // Requests are one write each; waiting for ACKs (Nagle) would only add latency.
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| SendError::Tls {
                    endpoint: self.endpoint.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                })?
                .map_err(|source| SendError::Tls {
                    endpoint: self.endpoint.clone(),
                    source,
                })?;
                Stream::Tls(Box::new(tls))
            }
        };
        let (sender, io) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_error(e))?;
        Ok(Conn {
            sender,
            link: Link {
                io,
                ended: false,
                error: None,
            },
            idle_since: Instant::now(),
        })
    }
}

/// Polls `fut` and, while it waits, the connection that feeds it, on the caller's own task.
/// `Err(Ended)` when the connection finished first and `fut` is still waiting; the
/// connection is then marked ended and never reused.
async fn drive<F: Future>(link: &mut Link, mut fut: Pin<&mut F>) -> Result<F::Output, Ended> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if link.ended {
            return Poll::Ready(Err(Ended));
        }
        let done = match link.io.poll_without_shutdown(cx) {
            Poll::Pending => false,
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                link.error = Some(e);
                true
            }
        };
        link.ended |= done;
        // What the connection just read may have answered `fut`: look now rather than after
        // a wake-up through the scheduler.
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if done {
            return Poll::Ready(Err(Ended));
        }
        Poll::Pending
    })
    .await
}

/// TCP, or TLS over TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
