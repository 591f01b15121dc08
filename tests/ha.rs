//! OpenBao HA: a real 3-node raft cluster on loopback; the node the provider uses is killed
//! under load. Calls must resume within one election plus one probe interval, with no
//! re-login storm (tokens are cluster-wide and survive a leader election).
pub mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bao_kms_provider::pb;
use common::cluster::Cluster;
use common::*;

/// One finished call: when it started, how long it took, whether it succeeded.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    took: Duration,
    ok: bool,
    code: String,
}

/// Encrypt + Decrypt in a loop, each with kube-apiserver's 3 s deadline, until `stop`.
fn load(
    p: &Provider,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<Call>>>) {
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let socket = p.socket.clone();
    let c = calls.clone();
    let h = tokio::spawn(async move {
        let mut client = bao_kms_provider::kms::client::connect(&socket)
            .await
            .expect("connect");
        while !stop.load(Ordering::SeqCst) {
            let at = Instant::now();
            let mut req = tonic::Request::new(pb::EncryptRequest {
                plaintext: vec![7; 32],
                uid: "ha".into(),
            });
            req.set_timeout(Duration::from_secs(3));
            let r = match client.encrypt(req).await {
                Ok(e) => {
                    let mut d = tonic::Request::new(decrypt_request(e.get_ref()));
                    d.set_timeout(Duration::from_secs(3));
                    client.decrypt(d).await.map(|_| ())
                }
                Err(s) => Err(s),
            };
            c.lock().expect("lock").push(Call {
                at,
                took: at.elapsed(),
                ok: r.is_ok(),
                code: r
                    .err()
                    .map(|s| format!("{:?}: {}", s.code(), s.message()))
                    .unwrap_or_default(),
            });
            // A steady load, not a flood: calls are spaced, as kube-apiserver's would be.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (h, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_in_use_fails_over_without_a_login_storm() {
    let started = Instant::now();
    let mut cluster = Cluster::start().await;
    let cluster_up = started.elapsed();
    let list = format!(
        "[{}]",
        cluster
            .addresses()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let o = ProviderOptions::with(&list, &cluster.jwt_path());
    let p = Provider::start(&o).await;
    let logins_before = p.logs().matches("logged in to OpenBao").count();
    assert_eq!(logins_before, 1, "{}", p.logs());

    let stop = Arc::new(AtomicBool::new(false));
    let (task, calls) = load(&p, stop.clone());
    let log = &calls;
    wait_for(
        "calls answered before the kill",
        Duration::from_secs(10),
        || async move { log.lock().expect("lock").iter().any(|c| c.ok) },
    )
    .await;

    // The provider uses node 1 (first in the list, the active node). Kill it.
    assert_eq!(cluster.active().await, Some(0));
    let killed_at = Instant::now();
    cluster.nodes[0].kill();
    // Wait for a new leader among the other two.
    let end = Instant::now() + Duration::from_secs(30);
    let mut elected = None;
    let mut elected_at = killed_at;
    while Instant::now() < end {
        if let Some(i) = cluster.active().await {
            elected = Some(killed_at.elapsed());
            elected_at = Instant::now();
            eprintln!("new active node: {}", cluster.nodes[i].name);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let election = elected.unwrap_or_else(|| panic!("no new leader within 30 s"));
    // Let the load run on the new leader: 50 calls (about 3 s of this load) made after the
    // election, the last of them in a row successful.
    wait_for(
        "50 calls on the new leader, the last 5 successful",
        Duration::from_secs(60),
        || async move {
            let calls = log.lock().expect("lock");
            let on_new: Vec<&Call> = calls.iter().filter(|c| c.at >= elected_at).collect();
            on_new.len() >= 50 && on_new.iter().rev().take(5).all(|c| c.ok)
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    task.await.expect("load task");

    let calls = calls.lock().expect("lock").clone();
    let after: Vec<&Call> = calls.iter().filter(|c| c.at >= killed_at).collect();
    let failed: Vec<&Call> = after.iter().copied().filter(|c| !c.ok).collect();
    let last_failure_end = failed
        .iter()
        .map(|c| c.at + c.took)
        .max()
        .map(|t| t.saturating_duration_since(killed_at));
    let slowest = calls.iter().map(|c| c.took).max().unwrap_or_default();
    eprintln!(
        "FIGURES ha: cluster start {:?}; election {:?}; calls after kill {}; failed {}; last failure ended {:?} after the kill; slowest call {:?}; errors {:?}",
        cluster_up,
        election,
        after.len(),
        failed.len(),
        last_failure_end,
        slowest,
        failed.iter().map(|c| c.code.clone()).collect::<std::collections::BTreeSet<_>>()
    );
    // Every call answered before its 3 s deadline.
    assert!(slowest < Duration::from_secs(3), "a call took {slowest:?}");
    // Calls resume within one election + one probe interval (300 ms) + one call.
    if let Some(t) = last_failure_end {
        assert!(
            t <= election + Duration::from_millis(300) + Duration::from_secs(3),
            "calls failed until {t:?} after the kill (election took {election:?})"
        );
    }
    let ok_at_end = after.iter().rev().take(5).all(|c| c.ok);
    assert!(ok_at_end, "calls still failing at the end:\n{}", p.logs());
    // No re-login: the token survives the leader election.
    let logins = p.logs().matches("logged in to OpenBao").count();
    assert_eq!(
        logins,
        1,
        "a node change must not cause logins:\n{}",
        p.logs()
    );
    p.wait_healthy().await;
}
