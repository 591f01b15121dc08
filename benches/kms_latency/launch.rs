//! The release provider as the bench runs it: production defaults (info logs, 30 s probes, 2 s
//! OpenBao timeout), JWT login, its own NOTIFY_SOCKET, restarted once per round to time
//! exec -> READY=1 against a state directory that already holds the key registry.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{die_with_parent, free_port, provider_bin, Bao};
use crate::procs::NotifySocket;

pub struct BenchProvider {
    child: Option<Child>,
    /// Config, socket, state and log live here for the provider's lifetime.
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    metrics_port: u16,
}

/// The bench's 64 callers plus the probe loop must not meet the concurrency cap
/// (`openbao.max_connections`, default 64): raised when the build under test knows the setting.
const MAX_CONNECTIONS: &str = "max_connections = 256\n";

fn config_text(bao: &Bao, dir: &Path, metrics: u16, health: u16, extra: &str) -> String {
    let ca = if bao.addr.starts_with("https") {
        format!("ca_file = \"{}\"\n", bao.ca_file().display())
    } else {
        String::new()
    };
    format!(
        "[server]\nsocket_path = \"{sock}\"\nstate_dir = \"{state}\"\n\
         [openbao]\naddress = \"{addr}\"\ninstance_id = \"openbao-bench\"\n{ca}{extra}\
         [auth]\nmethod = \"jwt\"\n[auth.jwt]\njwt_file = \"{jwt}\"\n\
         [transit.key_id_scope]\ncluster_id = \"bench\"\ntransit_mount_id = \"transit-bench\"\nkey_lineage_id = \"lineage-bench\"\n\
         [rotation]\nstable_observations = 1\nactivation_delay = \"0s\"\n\
         [log]\nlevel = \"info\"\nformat = \"text\"\n\
         [telemetry]\nmetrics_address = \"127.0.0.1:{metrics}\"\nhealth_address = \"127.0.0.1:{health}\"\n",
        sock = dir.join("kms.sock").display(),
        state = dir.join("state").display(),
        addr = bao.addr,
        jwt = bao.jwt_path().display(),
    )
}

impl BenchProvider {
    pub fn new(bao: &Bao) -> (BenchProvider, bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (metrics_port, health_port) = (free_port(), free_port());
        let config = dir.path().join("config.toml");
        let raised = config_text(bao, dir.path(), metrics_port, health_port, MAX_CONNECTIONS);
        std::fs::write(&config, &raised).expect("write config");
        // check-config also refuses the bench's short rotation delays (an upgrade check that
        // `serve` only warns about): only an error naming the setting means it is unknown.
        let known = Command::new(provider_bin())
            .args(["check-config", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    || !String::from_utf8_lossy(&o.stderr).contains("max_connections")
            });
        if !known {
            let plain = config_text(bao, dir.path(), metrics_port, health_port, "");
            std::fs::write(&config, plain).expect("write config");
        }
        let p = BenchProvider {
            socket: dir.path().join("kms.sock"),
            log: dir.path().join("provider.log"),
            config,
            metrics_port,
            child: None,
            _dir: dir,
        };
        (p, known)
    }

    /// Starts the provider and returns exec -> READY=1 (panics with the log if it never comes).
    pub fn start(&mut self, notify: &NotifySocket) -> Duration {
        notify.drain();
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = Command::new(provider_bin());
        die_with_parent(&mut cmd)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("WATCHDOG_USEC")
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("clone log"))
            .stderr(logf);
        let t = Instant::now();
        let child = cmd.spawn().expect("start the provider");
        self.child = Some(child);
        let ready = tokio::task::block_in_place(|| notify.wait_ready(t, Duration::from_secs(30)));
        ready.unwrap_or_else(|| {
            panic!(
                "the provider sent no READY=1 within 30s:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }

    /// SIGTERM, then wait (bounded); SIGKILL if it does not stop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                self.keep_log(pid);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// BENCH_KEEP_LOGS=DIR: append this run's provider log to DIR/provider-<pid>.log.
    fn keep_log(&self, pid: u32) {
        if let Some(dir) = std::env::var_os("BENCH_KEEP_LOGS") {
            let to = PathBuf::from(dir).join(format!("provider-{pid}.log"));
            let _ = std::fs::copy(&self.log, to);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Total OpenBao requests the provider has made (its own metrics), to count calls per KMS call.
    pub async fn openbao_requests(&self, http: &reqwest::Client) -> f64 {
        let Ok(resp) = http
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
        else {
            return f64::NAN;
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("openbao_kms_openbao_requests_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for BenchProvider {
    fn drop(&mut self) {
        self.stop();
    }
}
