//! The deadline of the KMS call being served, carried with the call like a Go `context`: the gRPC
//! adapter sets it from kube-apiserver's `grpc-timeout`, the OpenBao client reads it so that no
//! chain of login, failover and retry runs past the point where the caller has given up.
use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `fut` with `deadline` as the current call's deadline.
pub async fn scope<F: Future>(deadline: Instant, fut: F) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// The current call's deadline, or `now + default` outside a KMS call (probe loop, CLI, login
/// task), so every OpenBao request has a budget.
pub fn current_or(default: Duration) -> Instant {
    DEADLINE
        .try_with(|d| *d)
        .unwrap_or_else(|_| Instant::now() + default)
}

/// Whether this task serves a KMS call (rather than the probe loop, a login or the CLI).
pub(crate) fn in_call() -> bool {
    DEADLINE.try_with(|_| ()).is_ok()
}

/// The deadline for a call that arrived with `grpc-timeout` `header` (if any): the shorter of it
/// and `budget`, less a small margin so the answer reaches the caller before it gives up.
pub fn for_call(header: Option<&str>, budget: Duration) -> Instant {
    let asked = header.and_then(parse_grpc_timeout).unwrap_or(budget);
    let budget = asked.min(budget);
    let margin = (budget / 20).min(Duration::from_millis(100));
    Instant::now() + budget.saturating_sub(margin)
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n), per the gRPC HTTP/2 spec.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses_every_unit_and_refuses_junk() {
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout("2999m"),
            Some(Duration::from_millis(2999))
        );
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("1x"), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
    }

    #[test]
    fn call_deadline_is_the_shorter_of_header_and_budget() {
        let budget = Duration::from_secs(3);
        let d = for_call(Some("10S"), budget) - Instant::now();
        assert!(d <= budget && d > Duration::from_millis(2800), "{d:?}");
        let d = for_call(Some("1S"), budget) - Instant::now();
        assert!(d <= Duration::from_secs(1), "{d:?}");
    }
}
