//! What the bench reads about processes and the machine from /proc, and the sd_notify socket it
//! owns to time exec -> READY=1.
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU time (user + system, all threads, exited ones included) of process `pid` (0: the bench
/// itself) in seconds. The kernel's per-process CPU clock counts nanoseconds; /proc/PID/stat's
/// utime+stime come from the same counter but in 10 ms ticks, too coarse for 1 s runs, so it is
/// only the fallback.
pub fn cpu_seconds(pid: u32) -> f64 {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t; clock_gettime writes one timespec.
    let id = if pid == 0 {
        libc::CLOCK_PROCESS_CPUTIME_ID
    } else if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } == 0 {
        clock
    } else {
        return stat_cpu_seconds(pid);
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return stat_cpu_seconds(pid);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// utime + stime from /proc/PID/stat, in seconds.
fn stat_cpu_seconds(pid: u32) -> f64 {
    let path = match pid {
        0 => "/proc/self/stat".to_owned(),
        p => format!("/proc/{p}/stat"),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// A `Vm*` line of /proc/PID/status in KiB (VmRSS: resident now, VmHWM: peak resident).
pub fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(str::to_owned))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The 1-minute load average: the machine is shared, so every round records it.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(-1.0)
}

pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| {
                    l.strip_prefix("model name")?
                        .split_once(':')
                        .map(|(_, v)| v.trim().to_owned())
                })
                .unwrap_or_default(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

/// A unix datagram socket standing in for systemd's NOTIFY_SOCKET. A thread drains it at all
/// times (a full queue would block the provider's sd_notify) and timestamps each message.
pub struct NotifySocket {
    pub path: PathBuf,
    rx: mpsc::Receiver<(Instant, String)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("notify socket timeout");
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx.send((Instant::now(), msg)).is_err() {
                        return;
                    }
                }
            }
        });
        NotifySocket {
            path,
            rx,
            stop,
            thread: Some(thread),
        }
    }

    /// Forgets messages of earlier processes.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Time from `since` to the first READY=1, or None after `timeout`.
    pub fn wait_ready(&self, since: Instant, timeout: Duration) -> Option<Duration> {
        let end = since + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            let (at, msg) = self.rx.recv_timeout(left).ok()?;
            if msg.lines().any(|l| l == "READY=1") {
                return Some(at.saturating_duration_since(since));
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
