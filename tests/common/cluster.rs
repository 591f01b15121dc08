//! A real 3-node OpenBao HA cluster (integrated raft storage) on loopback, initialised with one
//! Shamir key, configured like the lab dev server (Transit, policy, JWT auth) through node 1.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    bao_bin, die_with_parent, free_port, free_port_pair, http, policy_text, repo_root, wait_for,
};

pub struct ClusterNode {
    child: Option<Child>,
    pub name: String,
    pub port: u16,
    pub addr: String,
    config: PathBuf,
    log: PathBuf,
}

impl ClusterNode {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log");
        let child = die_with_parent(&mut Command::new(bao_bin()))
            .args(["server", "-config"])
            .arg(&self.config)
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start bao node");
        self.child = Some(child);
    }

    /// SIGKILL: the node is gone at once, like a crashed host.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    pub dir: tempfile::TempDir,
    pub root_token: String,
    unseal_key: String,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts three nodes, initialises node 1, joins and unseals the others, configures Transit
    /// and JWT auth. Takes a few seconds.
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let port = free_port_pair();
            let cluster_port = loop {
                let p = free_port();
                if p != port && p != port + 1 {
                    break p;
                }
            };
            let data = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&data).expect("data dir");
            let config = dir.path().join(format!("n{i}.hcl"));
            std::fs::write(
                &config,
                format!(
                    "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n{i}\"\n  performance_multiplier = 1\n}}\n\
                     listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
                     api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"https://127.0.0.1:{cluster_port}\"\n\
                     disable_mlock = true\nui = false\nlog_level = \"info\"\n",
                    data.display()
                ),
            )
            .expect("node config");
            nodes.push(ClusterNode {
                child: None,
                name: format!("n{i}"),
                port,
                addr: format!("http://127.0.0.1:{port}"),
                config,
                log: dir.path().join(format!("n{i}.log")),
            });
        }
        for n in &mut nodes {
            n.spawn();
        }
        let http = http();
        for n in &nodes {
            let url = format!("{}/v1/sys/seal-status", n.addr);
            let h = http.clone();
            wait_for(
                &format!("OpenBao node {} listening", n.name),
                Duration::from_secs(20),
                || {
                    let (h, u) = (h.clone(), url.clone());
                    async move { h.get(u).send().await.is_ok() }
                },
            )
            .await;
        }
        let init = bao(
            &nodes[0].addr,
            None,
            &[
                "operator",
                "init",
                "-key-shares=1",
                "-key-threshold=1",
                "-format=json",
            ],
        );
        let init: Value = serde_json::from_str(&init).expect("init json");
        let unseal_key = init["unseal_keys_b64"][0]
            .as_str()
            .expect("unseal key")
            .to_owned();
        let root_token = init["root_token"].as_str().expect("root token").to_owned();
        bao(&nodes[0].addr, None, &["operator", "unseal", &unseal_key]);
        let cluster = Cluster {
            nodes,
            dir,
            root_token,
            unseal_key,
            http,
        };
        cluster.wait_active(0).await;
        let leader = cluster.nodes[0].addr.clone();
        // Autopilot promotes a joined node to voter only after it was stable this long (10 s
        // by default); a test that kills the leader right away needs voters at once.
        bao(
            &leader,
            Some(&cluster.root_token),
            &[
                "operator",
                "raft",
                "autopilot",
                "set-config",
                "-server-stabilization-time=1s",
            ],
        );
        for i in 1..3 {
            let addr = cluster.nodes[i].addr.clone();
            bao(&addr, None, &["operator", "raft", "join", &leader]);
            bao(&addr, None, &["operator", "unseal", &cluster.unseal_key]);
        }
        for i in 1..3 {
            cluster.wait_standby(i).await;
        }
        cluster.wait_voters(&leader, 3).await;
        let policy = cluster.dir.path().join("policy.hcl");
        std::fs::write(&policy, policy_text("transit", "k8s-etcd")).expect("policy");
        let out = Command::new(repo_root().join("scripts/openbao-lab.sh"))
            .args([
                "setup",
                &leader,
                &cluster.dir.path().to_string_lossy(),
                &policy.to_string_lossy(),
            ])
            .env("BAO_TOKEN", &cluster.root_token)
            .env("BAO_BIN", bao_bin())
            .output()
            .expect("run openbao-lab.sh");
        assert!(
            out.status.success(),
            "openbao-lab.sh setup on the cluster failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    pub fn jwt_path(&self) -> PathBuf {
        self.dir.path().join("identity.jwt")
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// `sys/health` status code of node `i` (200 active, 429 standby, 503 sealed), 0 if down.
    pub async fn health(&self, i: usize) -> u16 {
        match self
            .http
            .get(format!("{}/v1/sys/health", self.nodes[i].addr))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn wait_active(&self, i: usize) {
        self.wait_code(i, 200, "active").await;
    }

    async fn wait_standby(&self, i: usize) {
        self.wait_code(i, 429, "an unsealed standby").await;
    }

    async fn wait_code(&self, i: usize, code: u16, what: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if self.health(i).await == code {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "node {} did not become {what}; its log:\n{}",
            self.nodes[i].name,
            self.nodes[i].logs()
        );
    }

    async fn wait_voters(&self, leader: &str, want: usize) {
        let end = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < end {
            last = bao(
                leader,
                Some(&self.root_token),
                &["operator", "raft", "list-peers", "-format=json"],
            );
            let peers: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
            let voters = peers["data"]["config"]["servers"]
                .as_array()
                .map(|s| s.iter().filter(|p| p["voter"] == Value::Bool(true)).count())
                .unwrap_or(0);
            if voters >= want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the raft cluster did not reach {want} voters: {last}");
    }

    /// Index of the active node among the live ones.
    pub async fn active(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.health(i).await == 200 {
                return Some(i);
            }
        }
        None
    }
}

fn bao(addr: &str, token: Option<&str>, args: &[&str]) -> String {
    let out = Command::new(bao_bin())
        .args(args)
        .env("BAO_ADDR", addr)
        .envs(token.map(|t| ("BAO_TOKEN", t)))
        .output()
        .expect("run bao");
    assert!(
        out.status.success(),
        "bao {args:?} against {addr} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
