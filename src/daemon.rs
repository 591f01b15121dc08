//! `serve`: a small supervisor that wires the provider, the KMS socket, the probe loop and
//! telemetry together, tells systemd about readiness, start-up time and liveness (watchdog), and
//! handles signals (SIGTERM/SIGINT: drain and exit 0; SIGHUP: reload credentials and config).
mod liveness;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, Settings};
use crate::kms::{self, client::KmsClient};
use crate::openbao;
use crate::provider::Provider;
use crate::systemd;
use crate::telemetry::{self, http::HealthSource};
use liveness::{Liveness, NotLive};

/// How long a provider with a verified key registry waits for its first probe before it
/// accepts on the socket anyway and serves Status from the registry.
const REGISTRY_FIRST_PROBE_WAIT: Duration = Duration::from_millis(500);

/// Slack on top of one probe's bound before the socket is served without a first probe result.
const FIRST_PROBE_SLACK: Duration = Duration::from_secs(1);
/// systemd's watchdog is pinged this many times per `WatchdogSec=`.
const WATCHDOG_PINGS_PER_PERIOD: u32 = 3;
/// How often liveness is checked when systemd's watchdog is off, and the fastest it ever runs.
const TICK_WITHOUT_WATCHDOG: Duration = Duration::from_secs(5);
const MIN_TICK: Duration = Duration::from_millis(200);
/// How long the Status self-call may take.
const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The most start-up time asked of systemd at once (EXTEND_TIMEOUT_USEC).
const MAX_TIMEOUT_EXTENSION: Duration = Duration::from_secs(30);

struct Health {
    provider: Arc<Provider>,
    liveness: Arc<Liveness>,
}

impl HealthSource for Health {
    fn live(&self) -> Result<(), String> {
        self.liveness.check().map_err(|e| e.to_string())
    }

    fn ready(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if let Err(r) = self.live() {
            reasons.push(r);
        }
        if let Err(r) = self.provider.health().verdict() {
            reasons.push(r.to_string());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn refresh_metrics(&self) {
        telemetry::metrics::snapshot_age(self.provider.snapshot().age());
        telemetry::metrics::healthy(self.provider.health().is_healthy());
    }
}

/// One-line state for `systemctl status`.
fn status_line(provider: &Provider) -> String {
    let snap = provider.snapshot();
    let key_id = snap.key_id().unwrap_or("none");
    match provider.health().verdict() {
        Ok(()) => format!("serving key_id={key_id} healthz=ok"),
        Err(reason) if snap.waiting_for_openbao() => {
            format!("degraded: {reason} (serving key_id={key_id} from the key registry)")
        }
        Err(reason) => format!("serving key_id={key_id} healthz=not-ok: {reason}"),
    }
}

fn listener(settings: &Settings) -> Result<(tokio::net::UnixListener, PathBuf, bool)> {
    if let Some(l) = systemd::take_listener().context("taking the socket passed by systemd")? {
        let path = l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            .unwrap_or_else(|| settings.server.socket_path.clone());
        let l =
            tokio::net::UnixListener::from_std(l).context("using the socket passed by systemd")?;
        return Ok((l, path, true));
    }
    let l = kms::bind_unix_socket(&settings.server.socket_path, settings.server.socket_mode)?;
    Ok((l, settings.server.socket_path.clone(), false))
}

/// Runs until SIGTERM/SIGINT. Errors here are start-up failures (exit non-zero).
pub(crate) async fn run(settings: Settings, config_path: PathBuf) -> Result<()> {
    Supervisor::start(settings, config_path).await?.run().await
}

/// Owns the serving tasks and tells systemd about them: readiness, start-timeout extension,
/// watchdog, reload and drain.
struct Supervisor {
    settings: Settings,
    config_path: PathBuf,
    client: Arc<openbao::Client>,
    provider: Arc<Provider>,
    liveness: Arc<Liveness>,
    grpc: JoinHandle<Result<(), kms::SocketError>>,
    probes: JoinHandle<()>,
    http_tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// Status calls through the real gRPC server, over an in-memory pipe.
    self_client: KmsClient,
    socket_path: PathBuf,
    socket_activated: bool,
    ready_sent: bool,
    last_status: String,
}

impl Supervisor {
    /// Wires the provider, the KMS socket, the probe loop and the telemetry endpoints.
    async fn start(settings: Settings, config_path: PathBuf) -> Result<Self> {
        let client = Arc::new(
            openbao::Client::new(
                &settings.openbao,
                &settings.auth,
                &settings.transit,
                settings.server.kms_timeout,
            )
            .context("setting up the OpenBao client")?,
        );
        let provider = Arc::new(Provider::new(&settings, client.clone())?);
        let (socket, socket_path, socket_activated) = listener(&settings)?;
        tracing::info!(socket = %socket_path.display(), socket_activated, openbao = %settings.openbao.address, "starting bao-kms-provider");

        let (stop, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let liveness = Arc::new(Liveness::new(&settings));

        // The socket is served once the first probe attempt has finished (or failed): a client
        // queued in the backlog during a restart then gets a provider that can encrypt, and
        // while OpenBao is down Status still answers with the reason.
        // With a verified key registry the wait is short (REGISTRY_FIRST_PROBE_WAIT): a normal
        // restart (first probe in milliseconds) answers healthz ok from the first call, and a
        // restart during an OpenBao outage still serves the saved key_id well within a second.
        let (probed_tx, mut probed_rx) = watch::channel(false);
        let first_probe_limit = if provider.serves_from_registry() {
            REGISTRY_FIRST_PROBE_WAIT
        } else {
            settings.server.kms_timeout * 2 + FIRST_PROBE_SLACK
        };
        let accept_after = async move {
            let _ = tokio::time::timeout(first_probe_limit, probed_rx.wait_for(|done| *done)).await;
        };
        let (self_check_tx, self_check_rx) = tokio::sync::mpsc::channel(4);
        let grpc = tokio::spawn(kms::serve(
            socket,
            provider.clone(),
            self_check_rx,
            accept_after,
            stopped(),
            kms::Limits {
                drain: settings.server.drain_timeout,
                kms_timeout: settings.server.kms_timeout,
                max_concurrent_streams: settings.server.max_concurrent_streams,
                idle_timeout: settings.server.idle_timeout,
            },
        ));

        let probes = {
            let (p, l) = (provider.clone(), liveness.clone());
            tokio::spawn(p.run_probes(stopped(), move || {
                l.probe_beat();
                probed_tx.send_replace(true);
            }))
        };

        let health: Arc<dyn HealthSource> = Arc::new(Health {
            provider: provider.clone(),
            liveness: liveness.clone(),
        });
        let routes = telemetry::http::routes(
            settings.telemetry.metrics_address,
            settings.telemetry.health_address,
            health,
        );
        let http_tasks =
            telemetry::http::serve(routes, settings.telemetry.max_connections, &stopped)
                .await
                .context("binding the metrics/health address")?;

        Ok(Self {
            settings,
            config_path,
            client,
            provider,
            liveness,
            grpc,
            probes,
            http_tasks,
            stop,
            self_client: kms::client::connect_in_memory(self_check_tx),
            socket_path,
            socket_activated,
            ready_sent: false,
            last_status: String::new(),
        })
    }

    /// Serves until SIGTERM/SIGINT or until the gRPC server stops, then drains.
    async fn run(mut self) -> Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut snapshots = self.provider.subscribe();
        let tick_every = systemd::watchdog_interval()
            .map(|d| d / WATCHDOG_PINGS_PER_PERIOD)
            .unwrap_or(TICK_WITHOUT_WATCHDOG)
            .max(MIN_TICK);
        let mut tick = tokio::time::interval(tick_every);
        loop {
            self.report_state();
            tokio::select! {
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
                _ = sighup.recv() => self.reload().await,
                _ = snapshots.changed() => {}
                _ = tick.tick() => {
                    self.watchdog().await;
                    if self.grpc.is_finished() {
                        break;
                    }
                }
            }
        }
        self.drain().await
    }

    /// Before READY=1: READY=1 once healthy, otherwise the reason and more start-up time.
    /// After: STATUS= whenever the one-line state changes.
    fn report_state(&mut self) {
        if self.ready_sent {
            let line = status_line(&self.provider);
            if line != self.last_status {
                systemd::status(&line);
                self.last_status = line;
            }
        } else if self.provider.serving() {
            // Degraded (e.g. an unsaved key registry) still serves: ready.
            self.last_status = status_line(&self.provider);
            systemd::ready(&self.last_status);
            self.ready_sent = true;
            tracing::info!(
                key_id = self.provider.status_key_id(),
                "ready: login, key metadata and encrypt/decrypt probe succeeded"
            );
        } else if self.provider.serves_from_registry() && self.provider.snapshot().problem.is_some()
        {
            // The first probe failed, but Status is served from the verified registry: the
            // provider is doing its job; systemd must not kill it for OpenBao being away.
            self.last_status = status_line(&self.provider);
            systemd::ready(&self.last_status);
            self.ready_sent = true;
            tracing::warn!(
                key_id = self.provider.status_key_id(),
                status = %self.last_status,
                "ready, degraded: serving Status from the key registry while OpenBao does not answer"
            );
        } else {
            let reason = self
                .provider
                .health()
                .verdict()
                .err()
                .map(|r| r.to_string())
                .unwrap_or_default();
            systemd::status(&format!("waiting for OpenBao: {reason}"));
            self.extend_start_timeout();
        }
    }

    /// Extends the start timeout only up to server.start_timeout: after that the start job
    /// fails (kubelet, ordered after us, proceeds) and Restart= retries.
    fn extend_start_timeout(&self) {
        let left = self
            .settings
            .server
            .start_timeout
            .saturating_sub(self.liveness.started.elapsed());
        if !left.is_zero() {
            systemd::extend_timeout(left.min(MAX_TIMEOUT_EXTENSION));
        }
    }

    /// SIGHUP. RELOADING=1 ... READY=1 brackets the reload for systemd; before the first
    /// READY=1 the service is still starting and only the reload itself happens.
    async fn reload(&mut self) {
        if self.ready_sent {
            systemd::reloading();
        }
        match reload(&self.config_path, &self.client, &self.settings).await {
            Ok(applied) => {
                self.settings = applied;
                tracing::info!(config = %self.config_path.display(), "reloaded: new OpenBao client and credentials in use")
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reload failed; the previous OpenBao client, credentials and token stay in use")
            }
        }
        if self.ready_sent {
            self.last_status = status_line(&self.provider);
            systemd::ready(&self.last_status);
        }
    }

    /// Proves the gRPC server answers through its own stack, then pings systemd's watchdog
    /// only if both loops are alive.
    async fn watchdog(&self) {
        let mut c = self.self_client.clone();
        let answered =
            tokio::time::timeout(SELF_CHECK_TIMEOUT, c.status(crate::pb::StatusRequest {})).await;
        if matches!(answered, Ok(Ok(_))) {
            self.liveness.grpc_beat();
        }
        let alive = if self.grpc.is_finished() {
            Err(NotLive::GrpcStopped)
        } else if self.probes.is_finished() {
            Err(NotLive::ProbeStopped)
        } else {
            self.liveness.check()
        };
        match alive {
            Ok(()) => systemd::watchdog(),
            Err(reason) => tracing::error!(
                reason = %reason,
                "liveness check failed; withholding the watchdog ping"
            ),
        }
    }

    /// STOPPING=1, stop accepting, let in-flight calls finish (server.drain_timeout), stop the
    /// other tasks and remove a socket file we bound ourselves.
    async fn drain(self) -> Result<()> {
        drop(self.self_client);
        tracing::info!("stopping: draining in-flight KMS calls");
        systemd::stopping();
        let _ = self.stop.send(true);
        let served = self.grpc.await.context("gRPC server task")?;
        let _ = self.probes.await;
        for t in self.http_tasks {
            let _ = t.await;
        }
        if !self.socket_activated {
            // Leave no stale socket behind; with socket activation systemd owns the file.
            let _ = std::fs::remove_file(&self.socket_path);
        }
        served.context("serving the KMS socket")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// SIGHUP, all or nothing: re-read the config, build the OpenBao client (addresses, CA, client
/// certificate) and log in with the new credentials on the side, then swap. Fields that need a
/// restart are named in a warning and keep their running values. Returns the settings now in
/// effect.
async fn reload(
    config_path: &Path,
    client: &openbao::Client,
    running: &Settings,
) -> Result<Settings> {
    let new = config::load(config_path, &config::Environment::from_process())?;
    crate::hardening::refuse_untrusted(&new)?;
    for w in config::upgrade_checks(&new) {
        tracing::warn!(
            field = w.field().unwrap_or(""),
            "{w}; `check-config` refuses this"
        );
    }
    let restart = config::ReloadDiff::between(running, &new).fields(config::OnReload::Restart);
    if !restart.is_empty() {
        tracing::warn!(
            fields = restart.join(", "),
            "these settings changed but take effect only after a restart (systemctl restart bao-kms-provider); the running values stay"
        );
    }
    let applied = config::reloaded(running, &new);
    client
        .reload(&applied.openbao, &applied.auth)
        .await
        .context("building the OpenBao client and logging in with the reloaded configuration")?;
    Ok(applied)
}
