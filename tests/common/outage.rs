//! Outages longer than the provider's token can live: OpenBao taken away by the fault proxy
//! until the token has expired, and what the tests read afterwards (logins from `/metrics` and
//! at the proxy, the first KMS call once OpenBao answers again, whether the process is the same).
use std::time::{Duration, Instant};

use bao_kms_provider::pb;

use super::faults::FaultProxy;
use super::{decrypt_request, encrypt, wait_for, Bao, OwnJwt, Provider, ProviderOptions};

/// Token lifetimes a test can outlive: renewed after 1.3 s, replaced by a login at 4 s.
pub const TOKEN_TTL: Duration = Duration::from_secs(2);
pub const TOKEN_MAX_TTL: Duration = Duration::from_secs(4);

/// scripts/openbao-lab.sh settings for those lifetimes, and a JWT role that accepts no JWT past
/// its `exp` (OpenBao's default leeways, 150 s and 60 s, would outlast any test).
pub const SHORT_LIVED: [(&str, &str); 4] = [
    ("TOKEN_TTL", "2s"),
    ("TOKEN_MAX_TTL", "4s"),
    ("JWT_EXPIRATION_LEEWAY", "-1"),
    ("JWT_CLOCK_SKEW_LEEWAY", "-1"),
];

/// Logins the provider counted (`openbao_kms_auth_logins_total`, every method) with `result`
/// `success` or `failure`.
pub async fn logins(p: &Provider, result: &str) -> u64 {
    let (_, body) = p.http_get(p.metrics_port, "/metrics").await;
    let label = format!("result=\"{result}\"");
    body.lines()
        .filter(|l| l.starts_with("openbao_kms_auth_logins_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Waits until OpenBao has expired every token it gave the provider (its expiration manager
/// revokes them at their TTL) and the provider has since tried to log in and failed: the token
/// is gone on both sides.
pub async fn token_expired(bao: &Bao, p: &Provider) {
    let deadline = TOKEN_MAX_TTL * 3;
    wait_for(
        "OpenBao to expire the provider's token",
        deadline,
        || async { bao.token_accessors_besides_root().await.is_empty() },
    )
    .await;
    let failed = logins(p, "failure").await;
    wait_for(
        "a failed login after the token expired",
        deadline,
        || async { logins(p, "failure").await > failed },
    )
    .await;
}

/// OpenBao taken away: every connection to the proxy refused until `end`.
pub struct Outage {
    pub started: Instant,
}

impl Outage {
    pub fn begin(proxy: &FaultProxy) -> Outage {
        proxy.set_down();
        Outage {
            started: Instant::now(),
        }
    }

    /// Waits until the provider's token has expired during the outage (see `token_expired`).
    pub async fn until_token_expired(&self, bao: &Bao, p: &Provider) {
        token_expired(bao, p).await;
    }

    /// Keeps OpenBao away until `length` after the outage began: how long it lasts is the
    /// scenario, not a wait for something to happen.
    pub async fn lasting(&self, length: Duration) {
        tokio::time::sleep_until((self.started + length).into()).await;
    }

    /// OpenBao answers again; returns when, and how long it was away.
    pub fn end(self, proxy: &FaultProxy) -> (Instant, Duration) {
        proxy.set_up();
        (Instant::now(), self.started.elapsed())
    }
}

/// A Decrypt with kube-apiserver's 3 s deadline.
pub async fn try_decrypt(
    p: &Provider,
    sample: &pb::EncryptResponse,
) -> Result<pb::DecryptResponse, tonic::Status> {
    let mut r = tonic::Request::new(decrypt_request(sample));
    r.set_timeout(Duration::from_secs(3));
    p.client().await.decrypt(r).await.map(|r| r.into_inner())
}

/// The provider process is the one the test started: never restarted, still running.
pub fn assert_same_process(p: &Provider, pid: Option<u32>) {
    assert_eq!(p.pid(), pid, "the provider was restarted");
    assert!(
        p.exit_code().is_none(),
        "the provider exited:\n{}",
        p.logs()
    );
}

/// Logins counted by the provider and, for plain HTTP, the login requests that reached OpenBao.
pub struct LoginCount {
    pub succeeded: u64,
    pub failed: u64,
    pub requests: usize,
}

impl LoginCount {
    pub async fn take(p: &Provider, proxy: &FaultProxy) -> LoginCount {
        LoginCount {
            succeeded: logins(p, "success").await,
            failed: logins(p, "failure").await,
            requests: proxy.requests_to("/login"),
        }
    }
}

/// The first Decrypt after `since` must succeed; returns how long after `since` it answered.
pub async fn first_decrypt_succeeds(
    p: &Provider,
    sample: &pb::EncryptResponse,
    since: Instant,
) -> Duration {
    let r = try_decrypt(p, sample).await;
    let took = since.elapsed();
    assert!(
        r.is_ok(),
        "first Decrypt after {took:?}: {r:?}\n{}",
        p.logs()
    );
    took
}

/// A JWT provider behind the proxy whose JWT file expires during the coming outage; returns the
/// JWT, the proxy, the provider and a ciphertext to decrypt.
pub async fn jwt_provider_with_an_expiring_jwt(
    bao: &Bao,
) -> (OwnJwt, FaultProxy, Provider, pb::EncryptResponse) {
    let jwt = bao.own_jwt();
    let proxy = FaultProxy::start(bao.port).await;
    let p = Provider::start(&ProviderOptions::with(&proxy.addr(), &jwt.path)).await;
    let sample = encrypt(&mut p.client().await, &[3; 32]).await;
    // Valid for any login before the outage, expired long before it ends.
    bao.mint_jwt_for(jwt.dir.path(), 2);
    (jwt, proxy, p, sample)
}
