//! The closed-loop load generator: N callers issue one call after another until the deadline;
//! every latency is kept, failures are counted apart (never mixed into the latencies).
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type CallFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// One call of a scenario; cloned into every caller task.
pub type Call = Arc<dyn Fn() -> CallFuture + Send + Sync>;

pub struct Run {
    pub latencies: Vec<Duration>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

impl Run {
    pub fn calls(&self) -> u64 {
        self.latencies.len() as u64
    }

    /// Successful calls per second over the whole run.
    pub fn throughput(&self) -> f64 {
        self.calls() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile in milliseconds; `latencies` must be sorted.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)].as_secs_f64() * 1e3
    }
}

/// `callers` tasks call `call` back to back for `duration`; the run ends when the last caller's
/// last call has returned, so `elapsed` covers every counted call.
pub async fn run(call: &Call, callers: usize, duration: Duration) -> Run {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < end {
                let t = Instant::now();
                match call().await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut out = Run {
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        match t.await {
            Ok((l, e, f)) => {
                out.latencies.extend(l);
                out.errors += e;
                if out.first_error.is_none() {
                    out.first_error = f;
                }
            }
            Err(e) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert(format!("caller task failed: {e}"));
            }
        }
    }
    out.elapsed = start.elapsed();
    out.latencies.sort_unstable();
    out
}

/// Callers that keep a load up in the background (their calls are not counted) while another
/// scenario is measured: Status latency while 64 callers Decrypt.
pub struct Background {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    pub fn start(call: &Call, callers: usize) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..callers)
            .map(|_| {
                let (call, stop) = (call.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = call().await;
                    }
                })
            })
            .collect();
        Background { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
