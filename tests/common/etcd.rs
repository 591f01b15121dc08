//! A real etcd (Debian `etcd-server`) on loopback with TLS and client-certificate auth, like a
//! kubeadm control plane's, plus the real `etcdctl`.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bao_kms_provider::envelope::etcd::{EtcdClient, EtcdTls};

use super::{die_with_parent, free_port};

pub struct Etcd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn bin(name: &str) -> PathBuf {
    let p = PathBuf::from("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing — run `make tools` (Debian packages etcd-server etcd-client)",
        p.display()
    );
    p
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate whose key is
/// RSA in PKCS#1 ("RSA PRIVATE KEY"), as kubeadm writes apiserver-etcd-client.key.
fn make_pki(dir: &Path) {
    let run = |cmd: &str| openssl(dir, &cmd.split_whitespace().collect::<Vec<_>>());
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    run(&format!(
        "req -x509 {ec} -days 2 -subj /CN=etcd-test-ca -keyout ca.key -out ca.pem"
    ));
    run(&format!(
        "req {ec} -subj /CN=etcd-test-server -keyout server.key -out server.csr"
    ));
    run("genrsa -traditional -out client.key 2048");
    run("req -new -key client.key -subj /CN=kube-apiserver-etcd-client -out client.csr");
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
        run(&format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile {name}.ext -out {name}.pem"
        ));
    }
}

impl Etcd {
    pub async fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        make_pki(dir.path());
        let (client_port, peer_port) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let p = |f: &str| dir.path().join(f);
        let log = std::fs::File::create(p("etcd.log")).expect("log");
        let child = die_with_parent(&mut Command::new(bin("etcd")))
            .args([
                "--name",
                "test",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ])
            .arg("--data-dir")
            .arg(p("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &format!("test={peer}"),
                "--client-cert-auth",
            ])
            .arg("--cert-file")
            .arg(p("server.pem"))
            .arg("--key-file")
            .arg(p("server.key"))
            .arg("--trusted-ca-file")
            .arg(p("ca.pem"))
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start etcd");
        let mut etcd = Etcd {
            child,
            endpoint,
            ca: p("ca.pem"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            dir,
        };
        etcd.wait_ready().await;
        etcd
    }

    pub fn tls(&self) -> EtcdTls {
        EtcdTls {
            ca_file: Some(self.ca.clone()),
            cert_file: Some(self.client_cert.clone()),
            key_file: Some(self.client_key.clone()),
        }
    }

    /// The `--etcd-*` flags of `verify-etcd-value` and `scan-etcd` for this etcd.
    pub fn cli_args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        vec![
            "--etcd-endpoint".into(),
            self.endpoint.clone(),
            "--etcd-cacert".into(),
            path(&self.ca),
            "--etcd-cert".into(),
            path(&self.client_cert),
            "--etcd-client-key".into(),
            path(&self.client_key),
        ]
    }

    pub fn client(&self) -> EtcdClient {
        EtcdClient::new(&self.endpoint, &self.tls(), Duration::from_secs(3)).expect("etcd client")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let client = self.client();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if client.get(b"/readiness-probe").await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "etcd exited ({status}) before it was ready:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < end,
                "etcd not ready after 30s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn put(&self, key: &str, value: &[u8]) {
        self.client()
            .put(key.as_bytes(), value)
            .await
            .expect("etcd put");
    }

    /// The real `etcdctl` with the client certificate.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let out = Command::new(bin("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.client_cert)
            .arg("--key")
            .arg(&self.client_key)
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stores values as kube-apiserver 1.29+ does (an HKDF seed per writer) through the provider
/// `p`, under the provider name `name`: the values a real cluster leaves in etcd.
pub async fn kube_writer(p: &super::Provider, name: &str) -> bao_kms_provider::envelope::Writer {
    bao_kms_provider::envelope::Writer::new(
        p.client().await,
        name,
        bao_kms_provider::envelope::DekSourceType::HkdfSha256XNonceAesGcmSeed,
    )
    .expect("writer")
}
