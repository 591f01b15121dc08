//! One place that sends requests to OpenBao: node choice and failover, redirects, the call's
//! budget, retries (within the retry budget), the connection cap, a node's rate-limit backoff,
//! size caps and metrics. The nodes are in `nodes`, what an answer means in `answer`.
use std::borrow::Cow;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ::http::header::HeaderValue;
use ::http::{Method, StatusCode};
use rand::Rng;
use reqwest::Url;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::answer::{classify, transport_error};
use super::budget::{Priority, RetryBudget};
use super::conn::{Exchange, SendError};
use super::nodes::{Node, Nodes};
use super::request::{Accept, Call, JsonBody, Request};
use super::throttle;
use super::Error;
use crate::config::{AuthSettings, OpenBaoSettings};
use crate::telemetry::metrics;

/// OpenBao answers for this provider are small; anything larger is refused unread.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// An attempt with less time left than this is not started: it could not finish.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// Connection slots kept for the probe loop, renewals and logins when `max_connections` is at
/// least `4 * RESERVED_FOR_BACKGROUND`: a storm of KMS calls must not starve what keeps the
/// provider healthy.
const RESERVED_FOR_BACKGROUND: usize = 2;

/// How often a call waiting for a connection slot looks again at what the node needs.
const SLOT_RECHECK: Duration = Duration::from_millis(100);

/// Jitter before the one retry of a transient failure, so hosts do not retry in lockstep.
const RETRY_JITTER_MS: std::ops::RangeInclusive<u64> = 20..=120;

/// Bounded label set for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Login,
    Renew,
    Lookup,
    ReadKey,
    Encrypt,
    Decrypt,
    Health,
    ReadMount,
    ReadKeysConfig,
    Capabilities,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Renew => "renew",
            Self::Lookup => "lookup",
            Self::ReadKey => "read_key",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Health => "health",
            Self::ReadMount => "read_mount",
            Self::ReadKeysConfig => "read_keys_config",
            Self::Capabilities => "capabilities",
        }
    }
}

pub(crate) struct Http {
    nodes: RwLock<Arc<Nodes>>,
    /// Index of the node that answered last; calls start there.
    preferred: AtomicUsize,
    /// Connection slots, granted in arrival order (tokio's semaphore is fair).
    permits: Semaphore,
    /// Slots only requests outside a KMS call may use.
    reserved: Semaphore,
    max_connections: usize,
    retries: RetryBudget,
    /// Budget of a request made outside a KMS call (probe loop, login task, CLI).
    default_budget: Duration,
}

/// What one attempt on one node gave.
enum Attempt {
    /// The answer, and `Retry-After` when it was a 429 that carried one.
    Done(StatusCode, Zeroizing<Vec<u8>>, Option<Duration>),
    Redirect(Url),
}

/// Why an attempt gave no answer.
struct Failure {
    error: Error,
    /// The request may have reached OpenBao (a connection that could not be made, or a
    /// request never sent, did not: failing over from it costs OpenBao nothing).
    reached: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self {
            error,
            reached: false,
        }
    }
}

impl Http {
    pub(crate) fn new(
        settings: &OpenBaoSettings,
        auth: &AuthSettings,
        default_budget: Duration,
    ) -> Result<Self, Error> {
        let cap = settings.max_connections;
        let reserved = if cap >= 4 * RESERVED_FOR_BACKGROUND {
            RESERVED_FOR_BACKGROUND
        } else {
            0
        };
        Ok(Self {
            nodes: RwLock::new(Arc::new(Nodes::build(settings, auth)?)),
            preferred: AtomicUsize::new(0),
            permits: Semaphore::new(cap - reserved),
            reserved: Semaphore::new(reserved),
            max_connections: cap,
            retries: RetryBudget::new(settings.retry_budget),
            default_budget,
        })
    }

    /// Swaps in nodes built (and proven by a login) on the side.
    pub(crate) fn install(&self, fresh: Nodes) {
        let fresh = Arc::new(fresh);
        match self.nodes.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        self.preferred.store(0, Ordering::Relaxed);
    }

    pub(crate) fn default_budget(&self) -> Duration {
        self.default_budget
    }

    pub(crate) fn nodes(&self) -> Arc<Nodes> {
        match self.nodes.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sends one request and returns the JSON body decoded as `T` (or `None` for 204).
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        request: Request<'_>,
    ) -> Result<Option<T>, Error> {
        let nodes = self.nodes();
        self.call_on(&nodes, request).await
    }

    /// `call` against a given node set (a reload's candidate before it is installed).
    pub(crate) async fn call_on<T: DeserializeOwned>(
        &self,
        nodes: &Nodes,
        request: Request<'_>,
    ) -> Result<Option<T>, Error> {
        let mut call = self.start(request);
        let (code, bytes) = self.failover(nodes, &mut call).await?;
        if code == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(None);
        }
        let Request { op, path, .. } = call.request;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Protocol(format!("{} {path}: {e}", op.as_str())))
    }

    /// Like `call`, but any HTTP status of the preferred node is returned rather than turned
    /// into an error (sys/health).
    pub(crate) async fn status_of(&self, op: Operation, path: &str) -> Result<u16, Error> {
        let nodes = self.nodes();
        let mut call = self.start(Request::new(op, Method::GET, path).any_status());
        let (code, _) = self.failover(&nodes, &mut call).await?;
        Ok(code.as_u16())
    }

    /// The request as a call: inside a KMS call its deadline applies, outside one the
    /// default budget from now.
    fn start<'a>(&self, request: Request<'a>) -> Call<'a> {
        Call::new(request, crate::deadline::current_or(self.default_budget))
    }

    /// Tries the preferred node, then the others, on transient failures; then once more after
    /// a short jitter if time is left. A node that timed out is not tried again by this call,
    /// and a retry of a request that reached OpenBao needs the retry budget. Follows a redirect
    /// only to a configured node. Nothing runs past the call's deadline.
    async fn failover(
        &self,
        nodes: &Nodes,
        call: &mut Call<'_>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), Error> {
        let op = call.request.op;
        let priority = Priority::current();
        let count = nodes.nodes.len().max(1);
        let mut index = self.preferred.load(Ordering::Relaxed) % count;
        let mut last: Option<Error> = None;
        let mut timed_out = vec![false; count];
        // Every node once, then one jittered retry; redirects to configured nodes do not count
        // as failures but are limited to two hops.
        let (mut failures, mut hops, mut jittered) = (0, 0, false);
        // An earlier attempt of this call may have reached OpenBao; the next one is a retry.
        let (mut reached, mut redirected) = (false, false);
        while failures <= count {
            if timed_out.iter().all(|&t| t) {
                break;
            }
            if failures == count && !jittered {
                jittered = true;
                let jitter = Duration::from_millis(rand::thread_rng().gen_range(RETRY_JITTER_MS));
                if Instant::now() + jitter + MIN_ATTEMPT >= call.deadline {
                    break;
                }
                tokio::time::sleep(jitter).await;
                index = self.preferred.load(Ordering::Relaxed) % count;
            }
            // A node that timed out would most likely time out again: the next one, if any.
            match (0..count)
                .map(|step| (index + step) % count)
                .find(|&i| !timed_out.get(i).copied().unwrap_or(true))
            {
                Some(i) => index = i,
                None => break,
            }
            if Instant::now() + MIN_ATTEMPT > call.deadline {
                break;
            }
            let Some(node) = nodes.nodes.get(index) else {
                break;
            };
            if call.attempts == 0 {
                self.retries.first_attempt();
            } else if reached
                && !redirected
                && priority == Priority::Call
                && !self.retries.try_retry()
            {
                metrics::openbao_request_not_sent(op.as_str(), "retry_budget_exhausted");
                tracing::debug!(operation = op.as_str(), node = %node.url, "retry budget exhausted; not retrying");
                break;
            }
            redirected = false;
            let attempt_started = Instant::now();
            let attempts_before = call.attempts;
            // A 429 that said when to come back (`Retry-After`) is counted apart.
            let mut hinted = false;
            let result = match self.attempt(nodes, node, call, priority).await {
                Ok(Attempt::Done(code, bytes, _)) if call.request.accept == Accept::AnyStatus => {
                    Ok((code, bytes))
                }
                Ok(Attempt::Done(code, bytes, retry_after)) => {
                    hinted = retry_after.is_some();
                    classify(code, bytes).map_err(|error| Failure {
                        error,
                        reached: true,
                    })
                }
                Ok(Attempt::Redirect(location)) => {
                    metrics::openbao_request(
                        op.as_str(),
                        metrics::status_label(307),
                        attempt_started.elapsed(),
                    );
                    match nodes.by_origin(&location) {
                        Some(next) if hops < 2 => {
                            tracing::debug!(operation = op.as_str(), from = %node.url, to = %location.origin().ascii_serialization(), "following a redirect to a configured node");
                            hops += 1;
                            index = next;
                            redirected = true;
                            continue;
                        }
                        _ => {
                            tracing::warn!(operation = op.as_str(), node = %node.url, location = %location.origin().ascii_serialization(), "OpenBao redirected to an origin that is not a configured node; refused");
                            return Err(Error::RedirectRefused(
                                location.origin().ascii_serialization(),
                            ));
                        }
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(Failure { error, .. }) = &result {
                if matches!(error, Error::Overloaded(_) | Error::DeadlineTooShort { .. }) {
                    metrics::openbao_request_not_sent(op.as_str(), error.class().as_str());
                    tracing::debug!(operation = op.as_str(), node = %node.url, error = %error, "OpenBao request not sent");
                }
            }
            let label = match &result {
                Ok((code, _)) => metrics::status_label(code.as_u16()),
                Err(Failure {
                    error: Error::Server { status, .. },
                    ..
                }) => metrics::status_label(*status),
                Err(f) if hinted && matches!(f.error, Error::RateLimited) => {
                    Cow::Borrowed("retry_after")
                }
                Err(f) => Cow::Borrowed(f.error.class().as_str()),
            };
            if call.attempts > attempts_before {
                metrics::openbao_request(op.as_str(), label, attempt_started.elapsed());
            }
            match result {
                Ok(ok) => {
                    if self.preferred.swap(index, Ordering::Relaxed) % count != index && count > 1 {
                        tracing::info!(node = %node.url, "OpenBao node answered; using it from now on");
                    }
                    return Ok(ok);
                }
                // The probe loop, renewals and logins keep trying a rate-limited node within
                // their budget: they go ahead of the calls (see `throttle`).
                Err(Failure {
                    error: Error::RateLimited,
                    ..
                }) if priority == Priority::Background => {
                    last = Some(Error::RateLimited);
                }
                Err(Failure { error, reached: r }) if error.is_transient() => {
                    tracing::debug!(operation = op.as_str(), node = %node.url, attempt = call.attempts, error = %error, "OpenBao request failed; trying the next node");
                    if let Error::Timeout(_) = error {
                        if let Some(t) = timed_out.get_mut(index) {
                            *t = true;
                        }
                    }
                    reached |= r;
                    last = Some(error);
                    index = (index + 1) % count;
                    failures += 1;
                }
                // Not sent (no slot or no time left): the earlier failure says more, if any.
                Err(Failure { error, .. })
                    if matches!(error, Error::Overloaded(_) | Error::DeadlineTooShort { .. }) =>
                {
                    return Err(last.unwrap_or(error));
                }
                Err(Failure { error, .. }) => return Err(error),
            }
        }
        Err(last.unwrap_or(Error::Timeout(call.started.elapsed())))
    }

    /// A connection slot: KMS calls take theirs in arrival order; the probe loop, renewals
    /// and logins may also take one of the reserved slots, whichever frees first.
    async fn slot(&self, priority: Priority) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if priority == Priority::Call {
            return self.permits.acquire().await.ok();
        }
        if let Ok(p) = self.reserved.try_acquire() {
            return Some(p);
        }
        tokio::select! {
            p = self.reserved.acquire() => p.ok(),
            p = self.permits.acquire() => p.ok(),
        }
    }

    /// One request to one node, sent only when the call has time left for what the node has
    /// needed lately, after the node's rate-limit backoff, holding one of `max_connections`
    /// slots; bounded by the call's deadline and `openbao.timeout`.
    async fn attempt(
        &self,
        nodes: &Nodes,
        node: &Node,
        call: &mut Call<'_>,
        priority: Priority,
    ) -> Result<Attempt, Failure> {
        let too_short = |needed: Duration| Error::DeadlineTooShort {
            left: call.deadline.saturating_duration_since(Instant::now()),
            needed,
        };
        let needed = node.answers.needed(MIN_ATTEMPT, nodes.timeout);
        // A call that waits for a rate-limited node gives up with a little time left, so that
        // its answer reaches a caller whose deadline started before the call reached us.
        let Some(latest) = call.deadline.checked_sub(needed + MIN_ATTEMPT) else {
            return Err(too_short(needed).into());
        };
        let Some(pass) = node.throttle.admit(priority, latest).await else {
            return Err(too_short(needed).into());
        };
        // Waiting for a slot is given up once the budget left no longer covers what the node
        // needs, looked at again while waiting (its answers change it) without losing the
        // call's place in the queue.
        let mut slot = pin!(self.slot(priority));
        let _permit = loop {
            let needed = node.answers.needed(MIN_ATTEMPT, nodes.timeout);
            let give_up = call
                .deadline
                .checked_sub(needed + MIN_ATTEMPT)
                .unwrap_or_else(Instant::now);
            tokio::select! {
                permit = &mut slot => match permit {
                    Some(p) => break p,
                    None => return Err(Error::Overloaded(self.max_connections).into()),
                },
                _ = tokio::time::sleep_until((Instant::now() + SLOT_RECHECK).min(give_up).into()) => {
                    if Instant::now() >= give_up {
                        return Err(Error::Overloaded(self.max_connections).into());
                    }
                }
            }
        };
        // Waiting for the slot took time, and answers that came meanwhile may have changed
        // what the node needs: look again.
        let needed = node.answers.needed(MIN_ATTEMPT, nodes.timeout);
        if Instant::now() + needed + MIN_ATTEMPT > call.deadline {
            return Err(too_short(needed).into());
        }
        call.attempts += 1;
        let started = Instant::now();
        let deadline = call.attempt_deadline(nodes.timeout);
        let send = send(nodes, node, &call.request);
        let pending = node.answers.sent();
        let result = match tokio::time::timeout_at(deadline.into(), send).await {
            Ok(r) => r,
            Err(_) => Err(Failure {
                error: Error::Timeout(started.elapsed()),
                reached: true,
            }),
        };
        match &result {
            Ok(Attempt::Done(code, _, retry_after)) if code.as_u16() == 429 => {
                node.answers.record(started.elapsed());
                node.throttle.limited(*retry_after);
            }
            Ok(_) => {
                node.answers.record(started.elapsed());
                node.throttle.answered();
            }
            Err(Failure {
                error: Error::Timeout(took),
                ..
            }) => node.answers.record(*took),
            Err(_) => {}
        }
        drop((pending, pass));
        result
    }
}

async fn send(nodes: &Nodes, node: &Node, request: &Request<'_>) -> Result<Attempt, Failure> {
    let target = node.url_for(request.path)?;
    let mut req = ::http::Request::new(
        request
            .body
            .as_ref()
            .map(JsonBody::to_body)
            .unwrap_or_default(),
    );
    *req.method_mut() = request.method.clone();
    *req.uri_mut() = target.uri;
    let headers = req.headers_mut();
    if let Some(ns) = &nodes.namespace {
        headers.insert("x-vault-namespace", ns.clone());
    }
    if let Some(token) = request.token {
        headers.insert("x-vault-token", token.header());
    }
    if request.body.is_some() {
        headers.insert(
            ::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let Exchange {
        status,
        headers,
        body,
    } = node
        .pool
        .send(req, MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| Failure {
            reached: !matches!(
                e,
                SendError::Connect { .. } | SendError::ConnectTimeout(_) | SendError::Tls { .. }
            ),
            error: transport_error(e),
        })?;
    if status.is_redirection() {
        let location = headers
            .get(::http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| target.url.join(v).ok())
            .ok_or_else(|| Failure {
                error: Error::Protocol(format!("redirect {status} without a usable Location")),
                reached: true,
            })?;
        return Ok(Attempt::Redirect(location));
    }
    let retry_after = (status == StatusCode::TOO_MANY_REQUESTS)
        .then(|| throttle::retry_after(&headers))
        .flatten();
    Ok(Attempt::Done(status, body, retry_after))
}
