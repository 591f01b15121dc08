//! systemd integration, in-process: the socket systemd passes (`listenfd`) and `sd_notify`
//! (READY, STATUS, WATCHDOG, RELOADING, STOPPING, EXTEND_TIMEOUT_USEC). Outside systemd every
//! call here is a no-op.
use std::time::Duration;

use sd_notify::NotifyState;

/// The unix listening socket systemd passed (socket activation), if any.
pub(crate) fn take_listener() -> std::io::Result<Option<std::os::unix::net::UnixListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let listener = fds.take_unix_listener(0)?;
    if let Some(l) = &listener {
        l.set_nonblocking(true)?;
    }
    Ok(listener)
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// READY=1 with the one-line state shown by `systemctl status`.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub(crate) fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Asks systemd for more start-up time while OpenBao is not answering yet.
pub(crate) fn extend_timeout(by: Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

pub(crate) fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// RELOADING=1 with the CLOCK_MONOTONIC timestamp that `Type=notify-reload` (systemd 253+)
/// requires; older systemd ignores the timestamp.
pub(crate) fn reloading() {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => {
            let usec = i128::from(ts.tv_sec()) * 1_000_000 + i128::from(ts.tv_nsec()) / 1_000;
            send(&[NotifyState::Reloading, NotifyState::MonotonicUsec(usec)]);
        }
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub(crate) fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining in-flight KMS calls"),
    ]);
}

/// The watchdog period systemd expects pings within (`WatchdogSec=`), if enabled for us.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec))
    } else {
        None
    }
}
