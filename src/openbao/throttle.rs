//! One node's answer to a rate-limit quota (429). OpenBao's quota lets a number of requests
//! through per interval, refilled whole; sending a storm at once gets that number through and
//! wastes the rest. So after a 429 the node is "limited": KMS calls wait (without a connection
//! slot) and go through a small window at a time, after a backoff that honours `Retry-After`
//! (never shorter than the jittered exponential delay), each success letting the next one go
//! at once and widening the window, each 429 closing it to one request and backing off again.
//! The window's requests find the quota's refill and use it up without a burst of 429s.
//! Requests of the probe loop, renewals and logins go ahead of the calls and keep retrying a
//! 429 within their budget, so a quota the calls exhaust does not make the provider unhealthy.
use std::pin::pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Notify;

use super::budget::Priority;

/// The first backoff after a 429; each 429 in a row doubles it, up to the cap. The cap is
/// short so that a quota's refill is found soon after it comes.
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// A `Retry-After` longer than this is taken as this: no KMS call waits longer anyway, and
/// the probe loop must keep trying.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(10);

/// The node is no longer limited once it has not answered 429 for this long.
const CALM_AFTER: Duration = Duration::from_secs(5);

/// The most KMS call requests in flight to a limited node: the 429s sent past a quota's
/// refill are at most this many.
const MAX_WINDOW: usize = 4;

pub(super) struct Throttle {
    state: Mutex<State>,
    /// Wakes a call waiting for a place in the window.
    turn: Notify,
}

struct State {
    /// No request before this (the node's `Retry-After`, or our backoff).
    backoff_until: Option<Instant>,
    /// 429s in a row.
    strikes: u32,
    limited: bool,
    last_limited: Instant,
    /// Call requests in flight through the window, and how many it allows.
    through: usize,
    window: usize,
    /// Requests of the probe loop, renewals and logins waiting for or in flight to a limited
    /// node: calls wait until they are through, so they meet the quota's refill first.
    background: usize,
}

/// A place at a limited node (in the calls' window, or ahead of it), given back when dropped.
pub(super) struct Pass<'a> {
    throttle: Option<(&'a Throttle, Priority)>,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if let Some((t, priority)) = self.throttle {
            let mut s = t.state();
            match priority {
                Priority::Call => s.through = s.through.saturating_sub(1),
                Priority::Background => s.background = s.background.saturating_sub(1),
            }
            drop(s);
            t.turn.notify_one();
        }
    }
}

impl Throttle {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                backoff_until: None,
                strikes: 0,
                limited: false,
                last_limited: Instant::now(),
                through: 0,
                window: 1,
                background: 0,
            }),
            turn: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Waits until a request may be sent: at once, after the backoff, or (a KMS call to a
    /// limited node) when the window has room and no background request is waiting. `None`
    /// when that is not before `latest`.
    pub(super) async fn admit(&self, priority: Priority, latest: Instant) -> Option<Pass<'_>> {
        // Ahead of the calls from now on, until its request is answered.
        let mut ahead = None;
        if priority == Priority::Background {
            let mut s = self.state();
            if s.limited {
                s.background += 1;
                ahead = Some(Pass {
                    throttle: Some((self, Priority::Background)),
                });
            }
        }
        loop {
            let mut turn = pin!(self.turn.notified());
            turn.as_mut().enable();
            let backoff = {
                let now = Instant::now();
                let mut s = self.state();
                if s.limited && now.saturating_duration_since(s.last_limited) >= CALM_AFTER {
                    s.limited = false;
                    s.strikes = 0;
                }
                let at = s.backoff_until.map_or(now, |b| b.max(now));
                if at > latest {
                    return None;
                }
                if at > now {
                    Some(at)
                } else if priority == Priority::Background {
                    return Some(ahead.take().unwrap_or(Pass { throttle: None }));
                } else if !s.limited {
                    return Some(Pass { throttle: None });
                } else if s.through < s.window && s.background == 0 {
                    s.through += 1;
                    return Some(Pass {
                        throttle: Some((self, Priority::Call)),
                    });
                } else {
                    None
                }
            };
            match backoff {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => {
                    tokio::select! {
                        _ = turn => {}
                        _ = tokio::time::sleep_until(latest.into()) => return None,
                    }
                }
            }
        }
    }

    /// The node answered 429: back off (never shorter than `retry_after`), window of one.
    pub(super) fn limited(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        let mut s = self.state();
        s.limited = true;
        s.last_limited = now;
        s.window = 1;
        s.strikes = s.strikes.saturating_add(1);
        let exp = BACKOFF_BASE
            .saturating_mul(1 << s.strikes.saturating_sub(1).min(10))
            .min(BACKOFF_CAP);
        // Half fixed, half random: hosts that were limited together do not return together.
        let jittered = exp / 2 + exp.mul_f64(rand::thread_rng().gen_range(0.0..0.5));
        let delay = retry_after
            .map_or(jittered, |d| d.min(RETRY_AFTER_CAP))
            .max(jittered);
        let until = now + delay;
        s.backoff_until = Some(s.backoff_until.map_or(until, |b| b.max(until)));
    }

    /// The node answered (anything but 429): the next call may go, and one more beside it.
    pub(super) fn answered(&self) {
        let mut s = self.state();
        s.strikes = 0;
        if s.limited && s.window < MAX_WINDOW {
            s.window += 1;
            drop(s);
            self.turn.notify_one();
        }
    }
}

/// `Retry-After` as OpenBao sends it with `enable_rate_limit_response_headers`: whole seconds
/// until the quota's interval ends, rounded down (so often 0).
pub(super) fn retry_after(headers: &::http::HeaderMap) -> Option<Duration> {
    let value = headers.get(::http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn a_limited_node_lets_calls_through_one_window_at_a_time() {
        let t = Throttle::new();
        let free = t.admit(Priority::Call, soon(10)).await;
        assert!(
            free.is_some_and(|p| p.throttle.is_none()),
            "not limited: no window"
        );
        t.limited(Some(Duration::ZERO));
        // Within the backoff nothing goes, not even the probe loop.
        assert!(t.admit(Priority::Background, soon(1)).await.is_none());
        let first = t
            .admit(Priority::Call, soon(1000))
            .await
            .expect("after the backoff");
        // The window holds one call; the next waits for an answer.
        assert!(t.admit(Priority::Call, soon(50)).await.is_none());
        // The probe loop does not wait behind calls, and calls wait while it is in flight.
        let probe = t
            .admit(Priority::Background, soon(50))
            .await
            .expect("ahead");
        t.answered();
        drop(first);
        assert!(t.admit(Priority::Call, soon(50)).await.is_none());
        drop(probe);
        let first = t.admit(Priority::Call, soon(50)).await.expect("a place");
        drop(first);
        let a = t.admit(Priority::Call, soon(50)).await.expect("a place");
        let b = t
            .admit(Priority::Call, soon(50))
            .await
            .expect("the window grew");
        drop((a, b));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let t = Throttle::new();
        let before = Instant::now();
        t.limited(Some(Duration::from_secs(60)));
        let until = t.state().backoff_until.expect("backoff");
        let wait = until.duration_since(before);
        assert!(wait >= RETRY_AFTER_CAP && wait < RETRY_AFTER_CAP + Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_read_in_whole_seconds() {
        let mut h = ::http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(::http::header::RETRY_AFTER, "2".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            ::http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
