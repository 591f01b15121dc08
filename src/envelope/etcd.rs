//! Raw values from etcd through its gRPC gateway (`POST /v3/kv/range`, JSON with base64 keys and
//! values), with the etcd client certificate. Chosen over a gRPC etcd client: it needs no new
//! dependency (reqwest and rustls are already here) and every etcd 3.4+ serves it.
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use crate::support::{error_chain, pem_identity, read_capped, ReadError};

/// Values larger than this are refused (etcd's default request limit is 1.5 MiB).
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd endpoint {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("{what} {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("etcd TLS setup: {0}")]
    Tls(String),
    #[error("etcd {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("etcd {url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("etcd {url}: unexpected response: {reason}")]
    Protocol { url: String, reason: String },
    #[error("etcd {url}: response over {max} bytes")]
    TooLarge { url: String, max: usize },
}

/// TLS files, as etcdctl's `--cacert`, `--cert` and `--key`.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

pub struct EtcdClient {
    http: reqwest::Client,
    base: reqwest::Url,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
    #[serde(default)]
    more: bool,
}

/// grpc-gateway prints int64 fields as JSON strings.
#[derive(Deserialize, Default)]
struct Header {
    #[serde(default)]
    revision: String,
}

#[derive(Deserialize)]
struct KeyValue {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

/// One page of a range read: keys and raw values in key order, all at `revision`.
pub(crate) struct Page {
    pub(crate) revision: i64,
    pub(crate) kvs: Vec<(Vec<u8>, Vec<u8>)>,
    /// More keys follow the last one in this page.
    pub(crate) more: bool,
}

/// The `range_end` that makes a range cover every key starting with `prefix` (etcd's rule:
/// the prefix with its last byte below 0xff incremented; all 0xff means "to the end").
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl EtcdClient {
    pub fn new(endpoint: &str, tls: &EtcdTls, timeout: Duration) -> Result<Self, EtcdError> {
        let base = reqwest::Url::parse(endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| EtcdError::Endpoint(endpoint.to_owned()))?;
        crate::support::crypto_provider();
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout);
        if let Some(ca) = &tls.ca_file {
            let cert = reqwest::Certificate::from_pem(&read("etcd CA file", ca)?).map_err(|e| {
                EtcdError::File {
                    what: "etcd CA file",
                    path: ca.clone(),
                    reason: format!("not a PEM certificate: {e}"),
                }
            })?;
            b = b.tls_built_in_root_certs(false).add_root_certificate(cert);
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                let key_pem = zeroize::Zeroizing::new(read("etcd client key", key)?);
                let cert_pem = read("etcd client certificate", cert)?;
                let id = pem_identity(&key_pem, &cert_pem).map_err(|e| EtcdError::File {
                    what: "etcd client certificate/key",
                    path: cert.clone(),
                    reason: format!("not a PEM certificate and private key: {e}"),
                })?;
                b = b.identity(id);
            }
            (None, None) => {}
            _ => {
                return Err(EtcdError::Tls(
                    "a client certificate needs both --etcd-cert and --etcd-client-key".into(),
                ))
            }
        }
        let http = b.build().map_err(|e| EtcdError::Tls(e.to_string()))?;
        Ok(Self { http, base })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, EtcdError> {
        self.base
            .join(path)
            .map_err(|_| EtcdError::Endpoint(self.base.to_string()))
    }

    async fn post(&self, url: reqwest::Url, body: serde_json::Value) -> Result<Vec<u8>, EtcdError> {
        let shown = url.to_string();
        let req_err = |e: reqwest::Error| EtcdError::Request {
            url: shown.clone(),
            reason: error_chain(&e),
        };
        let resp = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(req_err)?;
        let status = resp.status();
        let mut bytes = Vec::new();
        let body = http::Response::<reqwest::Body>::from(resp).into_body();
        match read_capped(body, MAX_RESPONSE_BYTES, &mut bytes).await {
            Ok(()) => {}
            Err(ReadError::TooLarge) => {
                return Err(EtcdError::TooLarge {
                    url: shown,
                    max: MAX_RESPONSE_BYTES,
                })
            }
            Err(ReadError::Transport(e)) => {
                return Err(EtcdError::Request {
                    url: shown,
                    reason: error_chain(&*e),
                })
            }
        }
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(EtcdError::Status {
                url: shown,
                status: status.as_u16(),
                body,
            });
        }
        Ok(bytes)
    }

    /// The raw value at `key`, or None when the key does not exist.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EtcdError> {
        let url = self.url("v3/kv/range")?;
        let protocol = |reason: String| EtcdError::Protocol {
            url: url.to_string(),
            reason,
        };
        let body = self
            .post(url.clone(), json!({ "key": STANDARD.encode(key) }))
            .await?;
        let r: RangeResponse = serde_json::from_slice(&body)
            .map_err(|e| protocol(format!("not a range response: {e}")))?;
        match r.kvs.into_iter().next() {
            None => Ok(None),
            Some(kv) => STANDARD
                .decode(kv.value)
                .map(Some)
                .map_err(|e| protocol(format!("value is not base64: {e}"))),
        }
    }

    /// At most `limit` keys from `start` up to (not including) `end`, at `revision` (0: the
    /// latest; a scan passes its first page's revision so that all pages show one snapshot).
    pub(crate) async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        revision: i64,
    ) -> Result<Page, EtcdError> {
        let url = self.url("v3/kv/range")?;
        let protocol = |reason: String| EtcdError::Protocol {
            url: url.to_string(),
            reason,
        };
        let body = json!({
            "key": STANDARD.encode(start),
            "range_end": STANDARD.encode(end),
            "limit": limit,
            "revision": revision,
        });
        let body = self.post(url.clone(), body).await?;
        let r: RangeResponse = serde_json::from_slice(&body)
            .map_err(|e| protocol(format!("not a range response: {e}")))?;
        let revision = r
            .header
            .revision
            .parse()
            .map_err(|_| protocol(format!("header.revision {:?}", r.header.revision)))?;
        let kvs = r
            .kvs
            .into_iter()
            .map(|kv| Ok((STANDARD.decode(kv.key)?, STANDARD.decode(kv.value)?)))
            .collect::<Result<_, base64::DecodeError>>()
            .map_err(|e| protocol(format!("key or value is not base64: {e}")))?;
        Ok(Page {
            revision,
            kvs,
            more: r.more,
        })
    }

    /// Stores `value` at `key` (for tests and drills that write like kube-apiserver).
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EtcdError> {
        let body = json!({ "key": STANDARD.encode(key), "value": STANDARD.encode(value) });
        self.post(self.url("v3/kv/put")?, body).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(endpoint: &str, tls: EtcdTls) -> Result<EtcdClient, EtcdError> {
        EtcdClient::new(endpoint, &tls, Duration::from_secs(1))
    }

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/registry/"), b"/registry0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn bad_endpoints_and_tls_files_are_named() {
        for bad in ["127.0.0.1:2379", "ftp://h:1", "https://", ""] {
            assert!(
                matches!(new(bad, EtcdTls::default()), Err(EtcdError::Endpoint(_))),
                "{bad:?}"
            );
        }
        let missing = EtcdTls {
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..EtcdTls::default()
        };
        let err = new("https://127.0.0.1:2379", missing).err().expect("error");
        assert!(
            err.to_string()
                .starts_with("etcd CA file /nonexistent/ca.crt"),
            "{err}"
        );
        let half = EtcdTls {
            cert_file: Some("/x.crt".into()),
            ..EtcdTls::default()
        };
        let err = new("https://127.0.0.1:2379", half).err().expect("error");
        assert!(err.to_string().contains("--etcd-client-key"), "{err}");
        assert!(new("http://127.0.0.1:2379", EtcdTls::default()).is_ok());
    }
}
