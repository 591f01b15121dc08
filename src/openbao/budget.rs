//! What a request may spend beyond its first attempt: the retry budget shared by every call
//! (retries limited to a share of first attempts, so a slow or failing OpenBao is not sent
//! twice the load it already cannot carry), and each node's recent answer times (a request
//! whose call cannot wait that long is not sent: it would time out at OpenBao and hold a
//! connection slot that a call with time left could have used).
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RetryBudgetSettings;

/// The window over which first attempts and retries are counted.
const WINDOW_SECONDS: usize = 10;

/// Answer times kept per node; the estimate is a high percentile of these.
const ANSWER_SAMPLES: usize = 32;

/// Answer times older than this say nothing about the node any more.
const ANSWER_MEMORY: Duration = Duration::from_secs(30);

/// The percentile of recent answer times a call must have left to be sent.
const ANSWER_PERCENTILE: usize = 90;

/// Who is asking. KMS calls spend the retry budget, take connection slots in arrival order
/// and wait their turn at a rate-limited node; the probe loop, renewals and logins (few, and
/// what keeps the provider healthy) do not, and may use slots kept for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Priority {
    Call,
    Background,
}

impl Priority {
    /// A KMS call when this task serves one, else background.
    pub(super) fn current() -> Self {
        if crate::deadline::in_call() {
            Self::Call
        } else {
            Self::Background
        }
    }
}

/// Retries allowed as `percent` of the first attempts of the last `WINDOW_SECONDS`, plus
/// `min_per_second` for each second of it (as gRPC, Envoy and Finagle retry budgets do).
pub(super) struct RetryBudget {
    settings: RetryBudgetSettings,
    window: Mutex<Window>,
}

/// One bucket per second: (first attempts, retries), indexed by the second modulo the length.
struct Window {
    origin: Instant,
    /// The second (since `origin`) the newest bucket holds.
    current: u64,
    buckets: [(u32, u32); WINDOW_SECONDS],
}

impl Window {
    /// Empties the buckets of the seconds that passed since the last use.
    fn advance(&mut self, now: Instant) -> &mut (u32, u32) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let passed = second.saturating_sub(self.current);
        for step in 1..=passed.min(WINDOW_SECONDS as u64) {
            self.buckets[((self.current + step) % WINDOW_SECONDS as u64) as usize] = (0, 0);
        }
        self.current = self.current.max(second);
        &mut self.buckets[(self.current % WINDOW_SECONDS as u64) as usize]
    }
}

impl RetryBudget {
    pub(super) fn new(settings: RetryBudgetSettings) -> Self {
        Self {
            settings,
            window: Mutex::new(Window {
                origin: Instant::now(),
                current: 0,
                buckets: [(0, 0); WINDOW_SECONDS],
            }),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        match self.window.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A call's first attempt went out: it earns a share of a retry.
    pub(super) fn first_attempt(&self) {
        let mut w = self.window();
        w.advance(Instant::now()).0 += 1;
    }

    /// Takes one retry from the budget; `false` when the window has none left.
    pub(super) fn try_retry(&self) -> bool {
        let mut w = self.window();
        w.advance(Instant::now());
        let (firsts, retries) = w.buckets.iter().fold((0u64, 0u64), |(f, r), b| {
            (f + u64::from(b.0), r + u64::from(b.1))
        });
        let allowed = firsts * u64::from(self.settings.percent) / 100
            + u64::from(self.settings.min_per_second) * WINDOW_SECONDS as u64;
        if retries >= allowed {
            return false;
        }
        w.advance(Instant::now()).1 += 1;
        true
    }
}

/// One node's recent answer times (how long an answered attempt took, or how long an attempt
/// ran before it timed out: at least that long), and the requests it has not answered yet:
/// each has taken at least its age, so a node that suddenly stops answering is seen before
/// the first of them times out.
pub(super) struct AnswerTimes {
    ring: Mutex<Ring>,
}

struct Ring {
    /// (when answered, how long it took), oldest first.
    samples: std::collections::VecDeque<(Instant, Duration)>,
    /// When each unanswered request was sent, by ticket.
    pending: std::collections::HashMap<u64, Instant>,
    tickets: u64,
}

/// A request on its way to the node; dropping it (answered, timed out or abandoned) removes it
/// from the unanswered ones.
pub(super) struct Pending<'a> {
    times: &'a AnswerTimes,
    ticket: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.times.ring().pending.remove(&self.ticket);
    }
}

impl AnswerTimes {
    pub(super) fn new() -> Self {
        Self {
            ring: Mutex::new(Ring {
                samples: std::collections::VecDeque::with_capacity(ANSWER_SAMPLES),
                pending: std::collections::HashMap::new(),
                tickets: 0,
            }),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        match self.ring.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A request is sent now; it counts as unanswered until the returned guard is dropped.
    pub(super) fn sent(&self) -> Pending<'_> {
        let mut ring = self.ring();
        ring.tickets = ring.tickets.wrapping_add(1);
        let ticket = ring.tickets;
        ring.pending.insert(ticket, Instant::now());
        Pending {
            times: self,
            ticket,
        }
    }

    /// An answer (or a timeout) after `took`. Answers that came before this request was sent
    /// describe the node as it was before: they are dropped, so a node that is fast again (or
    /// slow again) is seen from its first answer on.
    pub(super) fn record(&self, took: Duration) {
        let now = Instant::now();
        let sent = now.checked_sub(took).unwrap_or(now);
        let mut ring = self.ring();
        ring.samples.retain(|(at, _)| *at >= sent);
        if ring.samples.len() >= ANSWER_SAMPLES {
            ring.samples.pop_front();
        }
        ring.samples.push_back((now, took));
    }

    /// What a request to this node should have left to be worth sending: the 90th percentile
    /// of its recent answer times and of the ages of its unanswered requests, at least `floor` (also the value with no recent answers) and
    /// at most `ceiling` (`openbao.timeout`: no attempt runs longer), so a call with its whole
    /// budget is always sent and a node that became fast again is seen at once.
    pub(super) fn needed(&self, floor: Duration, ceiling: Duration) -> Duration {
        let now = Instant::now();
        let mut recent: Vec<Duration> = {
            let ring = self.ring();
            ring.samples
                .iter()
                .filter(|(at, _)| now.saturating_duration_since(*at) < ANSWER_MEMORY)
                .map(|(_, took)| *took)
                .chain(
                    ring.pending
                        .values()
                        .map(|at| now.saturating_duration_since(*at)),
                )
                .collect()
        };
        if recent.is_empty() {
            return floor.min(ceiling);
        }
        let index = (recent.len() * ANSWER_PERCENTILE).div_ceil(100).max(1) - 1;
        let (_, p, _) = recent.select_nth_unstable(index);
        (*p).max(floor).min(ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetSettings {
            percent,
            min_per_second,
        })
    }

    #[test]
    fn retries_are_limited_to_a_share_of_first_attempts_plus_the_floor() {
        let b = budget(20, 0);
        for _ in 0..100 {
            b.first_attempt();
        }
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 20);
        let b = budget(20, 1);
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, WINDOW_SECONDS, "the floor alone, with no traffic");
    }

    #[test]
    fn a_window_that_passed_is_forgotten() {
        let mut w = Window {
            origin: Instant::now(),
            current: 0,
            buckets: [(0, 0); WINDOW_SECONDS],
        };
        w.advance(w.origin).0 = 7;
        let later = w.origin + Duration::from_secs(WINDOW_SECONDS as u64 + 1);
        w.advance(later);
        assert_eq!(w.buckets.iter().map(|b| b.0).sum::<u32>(), 0);
    }

    #[test]
    fn the_answer_time_needed_is_a_high_percentile_within_floor_and_ceiling() {
        let t = AnswerTimes::new();
        let (floor, ceiling) = (Duration::from_millis(50), Duration::from_secs(2));
        assert_eq!(t.needed(floor, ceiling), floor, "no answers yet");
        for ms in 1..=100u64 {
            t.record(Duration::from_millis(ms));
        }
        // The last 32 answers are 69..=100 ms; their 90th percentile is 97 ms.
        assert_eq!(t.needed(floor, ceiling), Duration::from_millis(97));
        t.record(Duration::from_secs(9));
        assert!(t.needed(floor, ceiling) <= ceiling);
        // A fast answer to a request sent after the slow ones were answered: fast again.
        std::thread::sleep(Duration::from_millis(5));
        t.record(Duration::from_millis(1));
        assert_eq!(t.needed(floor, ceiling), floor);
    }

    #[test]
    fn requests_the_node_has_not_answered_count_with_their_age() {
        let t = AnswerTimes::new();
        let (floor, ceiling) = (Duration::from_millis(1), Duration::from_secs(2));
        for _ in 0..32 {
            t.record(Duration::from_millis(5));
        }
        let waiting: Vec<_> = (0..64).map(|_| t.sent()).collect();
        std::thread::sleep(Duration::from_millis(30));
        assert!(t.needed(floor, ceiling) >= Duration::from_millis(30));
        drop(waiting);
        assert_eq!(t.needed(floor, ceiling), Duration::from_millis(5));
    }
}
