//! Liveness as seen by the watchdog and `/livez`: the probe loop and the gRPC server proved
//! themselves recently, and the process can still open a file and a socket.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Settings;

/// How long the gRPC self-check may go unanswered before liveness fails.
const GRPC_SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// OpenBao calls one probe may make in a row (login or renewal, key read, encrypt, decrypt,
/// a re-login and retry after a 403), each bounded by `openbao.timeout`.
const PROBE_CALL_BUDGET: u32 = 6;
/// Slack on top of the probe loop's own bound before it counts as silent.
const PROBE_SILENCE_SLACK: Duration = Duration::from_secs(5);

/// Why the provider is not live; `/livez` and the watchdog's log line show the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum NotLive {
    #[error("probe loop silent for {}s", .0.as_secs())]
    ProbeSilent(Duration),
    #[error("KMS gRPC server has not answered its self-check for {}s", .0.as_secs())]
    GrpcSilent(Duration),
    #[error("probe loop stopped")]
    ProbeStopped,
    #[error("KMS gRPC server stopped")]
    GrpcStopped,
    /// At the descriptor limit new KMS connections, OpenBao connections, logins (the JWT file)
    /// and key registry saves all fail, while the loops above may still look alive.
    #[error("cannot open a {what}: {error}; new KMS and OpenBao connections and key registry saves fail too")]
    NoDescriptor { what: &'static str, error: String },
}

pub(super) struct Liveness {
    pub(super) started: Instant,
    probe_beat_ms: AtomicU64,
    grpc_beat_ms: AtomicU64,
    probe_limit: Duration,
}

impl Liveness {
    pub(super) fn new(settings: &Settings) -> Self {
        Self::with_probe_limit(
            Instant::now(),
            settings.status.probe_interval * 2
                + settings.openbao.timeout * PROBE_CALL_BUDGET
                + PROBE_SILENCE_SLACK,
        )
    }

    fn with_probe_limit(started: Instant, probe_limit: Duration) -> Self {
        Self {
            started,
            probe_beat_ms: AtomicU64::new(0),
            grpc_beat_ms: AtomicU64::new(0),
            probe_limit,
        }
    }

    /// The probe loop finished an attempt.
    pub(super) fn probe_beat(&self) {
        Self::beat(self.started, &self.probe_beat_ms);
    }

    /// The gRPC server answered the Status self-call.
    pub(super) fn grpc_beat(&self) {
        Self::beat(self.started, &self.grpc_beat_ms);
    }

    fn beat(started: Instant, which: &AtomicU64) {
        which.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since(&self, which: &AtomicU64) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(which.load(Ordering::Relaxed)))
    }

    /// `/livez` and the watchdog: both loops have proved themselves recently (the gRPC beat
    /// comes from a Status self-call through the real service, so a wedged server stops it),
    /// and a descriptor can still be opened.
    pub(super) fn check(&self) -> Result<(), NotLive> {
        self.loops()?;
        descriptors()
    }

    fn loops(&self) -> Result<(), NotLive> {
        let probe = self.since(&self.probe_beat_ms);
        if probe > self.probe_limit {
            return Err(NotLive::ProbeSilent(probe));
        }
        let grpc = self.since(&self.grpc_beat_ms);
        if grpc > GRPC_SILENCE_LIMIT {
            return Err(NotLive::GrpcSilent(grpc));
        }
        Ok(())
    }
}

/// Opens (and closes at once) `/dev/null` and an unbound unix socket: both fail with EMFILE at
/// the process's limit, or ENFILE at the host's.
fn descriptors() -> Result<(), NotLive> {
    std::fs::File::open("/dev/null").map_err(|e| NotLive::NoDescriptor {
        what: "file (/dev/null)",
        error: e.to_string(),
    })?;
    std::os::unix::net::UnixDatagram::unbound().map_err(|e| NotLive::NoDescriptor {
        what: "socket",
        error: e.to_string(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness(age: Duration) -> Liveness {
        Liveness::with_probe_limit(
            Instant::now().checked_sub(age).expect("uptime"),
            Duration::from_secs(10),
        )
    }

    #[test]
    fn livez_fails_when_either_loop_falls_silent() {
        let fresh = liveness(Duration::from_secs(1));
        assert_eq!(fresh.check(), Ok(()));

        let l = liveness(Duration::from_secs(20));
        l.grpc_beat();
        assert!(matches!(l.check(), Err(NotLive::ProbeSilent(_))));

        let l = liveness(Duration::from_secs(40));
        l.probe_beat();
        let err = l.check().unwrap_err();
        assert!(matches!(err, NotLive::GrpcSilent(_)), "{err}");
        assert!(err.to_string().contains("gRPC"), "{err}");

        l.grpc_beat();
        assert_eq!(l.check(), Ok(()));
    }

    #[test]
    fn the_reason_for_missing_descriptors_names_what_else_fails() {
        let err = NotLive::NoDescriptor {
            what: "file (/dev/null)",
            error: std::io::Error::from_raw_os_error(24).to_string(),
        };
        let text = err.to_string();
        assert!(
            text.contains("/dev/null") && text.contains("os error 24"),
            "{text}"
        );
    }
}
