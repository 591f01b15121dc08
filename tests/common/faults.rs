//! Faults made on the wire between the provider and a real OpenBao: one TCP proxy that can
//! refuse connections (OpenBao "down" without losing its in-memory state), add latency to every
//! answer (per chunk, or once per answer counted from its request), count the requests in
//! flight, reset the next request's connection, answer the next request with a canned HTTP
//! response (a 503, a redirect) instead of forwarding it, close kept-alive connections, or
//! switch to another backend; and a canary listener that records whatever reaches it.
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Faults {
    /// The backend port new connections go to.
    target: AtomicU16,
    down: AtomicBool,
    delay_ms: AtomicU64,
    /// Each answer is held until this long after its request was forwarded.
    response_delay_ms: AtomicU64,
    /// Requests forwarded to OpenBao whose answer has not reached the client yet and whose
    /// connection the client has not closed; and the most seen at once.
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    reset_next: AtomicBool,
    canned_next: Mutex<Option<Vec<u8>>>,
    /// Connections currently open through the proxy, and the most at once.
    open: AtomicUsize,
    peak_open: AtomicUsize,
    /// Requests (client->server chunks that start with an HTTP method) seen.
    requests: AtomicUsize,
    /// The request line of each of them ("POST /v1/transit/decrypt/k HTTP/1.1").
    request_lines: Mutex<Vec<String>>,
    /// `close_connections` calls so far: a connection opened before the latest one closes.
    epoch: AtomicU64,
    /// Wakes every connection waiting for the client to be closed now.
    close: tokio::sync::Notify,
    /// Connections closed by `close_connections`.
    severed: AtomicUsize,
}

impl Faults {
    fn new(target: u16) -> Self {
        Self {
            target: AtomicU16::new(target),
            down: AtomicBool::default(),
            delay_ms: AtomicU64::default(),
            response_delay_ms: AtomicU64::default(),
            in_flight: AtomicUsize::default(),
            peak_in_flight: AtomicUsize::default(),
            reset_next: AtomicBool::default(),
            canned_next: Mutex::default(),
            open: AtomicUsize::default(),
            peak_open: AtomicUsize::default(),
            requests: AtomicUsize::default(),
            request_lines: Mutex::default(),
            epoch: AtomicU64::default(),
            close: tokio::sync::Notify::new(),
            severed: AtomicUsize::default(),
        }
    }
}

pub struct FaultProxy {
    pub port: u16,
    faults: Arc<Faults>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(target_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("addr").port();
        let faults = Arc::new(Faults::new(target_port));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (f, c) = (faults.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if f.down.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let f = f.clone();
                // Read before the connection counts as open: a close requested once it is
                // counted always reaches it.
                let born = f.epoch.load(Ordering::SeqCst);
                let target = f.target.load(Ordering::SeqCst);
                let h = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let now = f.open.fetch_add(1, Ordering::SeqCst) + 1;
                        f.peak_open.fetch_max(now, Ordering::SeqCst);
                        pump(inbound, outbound, &f, born).await;
                        f.open.fetch_sub(1, Ordering::SeqCst);
                    }
                });
                let mut list = c.lock().expect("lock");
                list.retain(|h| !h.is_finished());
                list.push(h);
            }
        });
        FaultProxy {
            port,
            faults,
            conns,
            task,
        }
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every answer from OpenBao reaches the client this much later.
    pub fn set_delay(&self, d: Duration) {
        self.faults
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Every answer reaches the client `d` after its request was forwarded to OpenBao (or at
    /// once if OpenBao took longer), on each connection independently: a slow OpenBao.
    pub fn set_response_delay(&self, d: Duration) {
        self.faults
            .response_delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests sent on to OpenBao and neither answered nor closed by the client.
    pub fn in_flight(&self) -> usize {
        self.faults.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests in flight at once since the last call (which resets it).
    pub fn take_peak_in_flight(&self) -> usize {
        self.faults
            .peak_in_flight
            .swap(self.in_flight(), Ordering::SeqCst)
    }

    /// The next request's connection is reset (RST) instead of forwarded.
    pub fn reset_next(&self) {
        self.faults.reset_next.store(true, Ordering::SeqCst);
    }

    /// The next request is answered with `response` (a full HTTP/1.1 response) and its
    /// connection closed; OpenBao never sees it.
    pub fn answer_next(&self, response: String) {
        *self.faults.canned_next.lock().expect("lock") = Some(response.into_bytes());
    }

    pub fn canned_pending(&self) -> bool {
        self.faults.canned_next.lock().expect("lock").is_some()
    }

    /// Refuses new connections and drops the open ones, until `set_up`.
    pub fn set_down(&self) {
        self.faults.down.store(true, Ordering::SeqCst);
        for h in self.conns.lock().expect("lock").drain(..) {
            h.abort();
        }
    }

    pub fn set_up(&self) {
        self.faults.down.store(false, Ordering::SeqCst);
    }

    /// Closes every open connection with a FIN to the client and keeps accepting new ones: what
    /// OpenBao's idle timeout (or a restarted load balancer) does to kept-alive connections.
    pub fn close_connections(&self) {
        self.faults.epoch.fetch_add(1, Ordering::SeqCst);
        self.faults.close.notify_waiters();
    }

    /// New connections go to `target`; every open one is closed (as `close_connections`), so
    /// a TLS client has to make a full handshake with the new backend.
    pub fn switch_to(&self, target: u16) {
        self.faults.target.store(target, Ordering::SeqCst);
        self.close_connections();
    }

    /// Connections closed by `close_connections` so far.
    pub fn severed(&self) -> usize {
        self.faults.severed.load(Ordering::SeqCst)
    }

    pub fn open_connections(&self) -> usize {
        self.faults.open.load(Ordering::SeqCst)
    }

    /// The most connections open at once since the last call (which resets it).
    pub fn take_peak_connections(&self) -> usize {
        self.faults
            .peak_open
            .swap(self.open_connections(), Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.faults.requests.load(Ordering::SeqCst)
    }

    /// Requests seen whose request line contains `fragment` (a path such as "/decrypt/").
    pub fn requests_to(&self, fragment: &str) -> usize {
        let lines = self.faults.request_lines.lock().expect("lock");
        lines.iter().filter(|l| l.contains(fragment)).count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.set_down();
    }
}

async fn pump(inbound: TcpStream, outbound: TcpStream, f: &Arc<Faults>, born: u64) {
    let (mut in_r, in_w) = inbound.into_split();
    let (mut out_r, mut out_w) = outbound.into_split();
    let in_w = Arc::new(tokio::sync::Mutex::new(in_w));
    // The forwarded request still unanswered on this connection (HTTP/1.1: at most one).
    let pending: Arc<Mutex<Option<Instant>>> = Arc::default();
    let counted = Arc::new(AtomicBool::new(false));
    let _uncount = Unanswered(counted.clone(), f.clone());
    let back = {
        let (in_w, f, pending, counted) =
            (in_w.clone(), f.clone(), pending.clone(), counted.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match out_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let delay = f.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let asked = pending.lock().expect("lock").take();
                if let Some(asked) = asked {
                    let hold = Duration::from_millis(f.response_delay_ms.load(Ordering::SeqCst));
                    tokio::time::sleep_until((asked + hold).into()).await;
                }
                if in_w.lock().await.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                if counted.swap(false, Ordering::SeqCst) {
                    f.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _ = in_w.lock().await.shutdown().await;
        })
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Enabled before the epoch is checked: a close requested at any moment (also while a
        // request was being forwarded) is seen here or wakes the read below.
        let close = f.close.notified();
        tokio::pin!(close);
        close.as_mut().enable();
        let sever = f.epoch.load(Ordering::SeqCst) != born;
        let read = if sever {
            None
        } else {
            tokio::select! {
                r = in_r.read(&mut buf) => Some(r),
                _ = &mut close => None,
            }
        };
        let Some(read) = read else {
            back.abort();
            let _ = in_w.lock().await.shutdown().await;
            f.severed.fetch_add(1, Ordering::SeqCst);
            break;
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if starts_request(&buf[..n]) {
            f.requests.fetch_add(1, Ordering::SeqCst);
            let line = buf[..n].split(|&b| b == b'\r').next().unwrap_or_default();
            f.request_lines
                .lock()
                .expect("lock")
                .push(String::from_utf8_lossy(line).into_owned());
            if f.reset_next.swap(false, Ordering::SeqCst) {
                // Linger 0 makes the close an RST; with a zero timeout it never blocks.
                #[allow(deprecated)]
                let _ = in_r.as_ref().set_linger(Some(Duration::ZERO));
                break;
            }
            let canned = f.canned_next.lock().expect("lock").take();
            if let Some(resp) = canned {
                let mut w = in_w.lock().await;
                let _ = w.write_all(&resp).await;
                let _ = w.shutdown().await;
                break;
            }
        }
        if starts_request(&buf[..n]) {
            *pending.lock().expect("lock") = Some(Instant::now());
            if !counted.swap(true, Ordering::SeqCst) {
                let now = f.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                f.peak_in_flight.fetch_max(now, Ordering::SeqCst);
            }
        }
        if out_w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    back.abort();
}

/// Uncounts a connection's unanswered request when the connection ends (closed by the client,
/// severed, or its task aborted by `set_down`).
struct Unanswered(Arc<AtomicBool>, Arc<Faults>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if self.0.swap(false, Ordering::SeqCst) {
            self.1.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn starts_request(chunk: &[u8]) -> bool {
    [&b"GET "[..], b"POST ", b"PUT ", b"LIST ", b"DELETE "]
        .iter()
        .any(|m| chunk.starts_with(m))
}

/// A listener that records every byte sent to it and never answers.
pub struct Canary {
    pub port: u16,
    seen: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Canary {
    pub async fn start() -> Canary {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("canary bind");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        s.lock().expect("lock").extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Canary { port, seen, task }
    }

    pub fn seen(&self) -> Vec<u8> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A canned response: `status` line, extra headers, empty body, connection closed.
pub fn http_response(status: &str, headers: &[(&str, String)]) -> String {
    let mut r = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(
        "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    r
}
