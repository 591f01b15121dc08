//! The configured OpenBao nodes as the client holds them: each with its connections, its
//! recent answer times, its rate-limit state and its request URLs; and the set a reload swaps.
use std::sync::RwLock;
use std::time::Duration;

use ::http::header::HeaderValue;
use reqwest::Url;

use super::budget::AnswerTimes;
use super::conn::Pool;
use super::throttle::Throttle;
use super::tls::for_names;
use super::Error;
use crate::config::{AuthSettings, OpenBaoSettings};

/// Request paths whose URL a node keeps once joined: the provider uses about ten distinct paths,
/// so the cache stays tiny; `Url::join` (a full re-parse, host included) is not paid per call.
const MAX_CACHED_URLS: usize = 32;

/// One configured node with its own connections (its own certificate name).
pub(super) struct Node {
    pub(super) url: Url,
    pub(super) pool: Pool,
    /// How long it has needed to answer lately.
    pub(super) answers: AnswerTimes,
    /// Its rate-limit backoff and pace.
    pub(super) throttle: Throttle,
    /// `path` -> `url` joined with `v1/<path>`, filled on first use.
    urls: RwLock<Vec<(Box<str>, Target)>>,
}

/// A request path on one node: the full URL (redirects resolve against it) and the
/// origin-form URI sent on the wire.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) url: Url,
    pub(super) uri: ::http::Uri,
}

impl Node {
    pub(super) fn url_for(&self, path: &str) -> Result<Target, Error> {
        let cached = |urls: &Vec<(Box<str>, Target)>| {
            urls.iter()
                .find(|(p, _)| &**p == path)
                .map(|(_, t)| t.clone())
        };
        let found = match self.urls.read() {
            Ok(g) => cached(&g),
            Err(p) => cached(&p.into_inner()),
        };
        if let Some(url) = found {
            return Ok(url);
        }
        let url = self
            .url
            .join(&format!("v1/{}", path.trim_start_matches('/')))
            .map_err(|e| Error::Protocol(format!("bad request path {path:?}: {e}")))?;
        let mut origin_form = url.path().to_owned();
        if let Some(query) = url.query() {
            origin_form.push('?');
            origin_form.push_str(query);
        }
        let uri = ::http::Uri::try_from(origin_form)
            .map_err(|e| Error::Protocol(format!("bad request path {path:?}: {e}")))?;
        let target = Target { url, uri };
        let mut urls = match self.urls.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if urls.len() < MAX_CACHED_URLS && cached(&urls).is_none() {
            urls.push((path.into(), target.clone()));
        }
        Ok(target)
    }
}

/// `openbao.namespace` as the header it is sent in. Config validation refuses a namespace that
/// is not a valid header value, so this only fails for settings built some other way.
fn namespace_header(namespace: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(namespace).map_err(|_| Error::Setting {
        field: "openbao.namespace",
        reason: "is not a valid HTTP header value",
    })
}

/// Everything a reload may change, built whole on the side and swapped in one step.
pub(crate) struct Nodes {
    pub(super) nodes: Vec<Node>,
    /// The `X-Vault-Namespace` header, built once here rather than per request.
    pub(super) namespace: Option<HeaderValue>,
    pub(super) timeout: Duration,
}

impl Nodes {
    /// Builds a client per node (reading CA and client certificate files); nothing is swapped.
    pub(crate) fn build(settings: &OpenBaoSettings, auth: &AuthSettings) -> Result<Self, Error> {
        let names: Vec<Option<&str>> = settings
            .nodes
            .iter()
            .map(|n| n.tls_server_name.as_deref())
            .collect();
        let tls = for_names(settings, &names, auth)?;
        let nodes = settings
            .nodes
            .iter()
            .zip(tls)
            .map(|(n, tls)| {
                Ok(Node {
                    url: n.url.clone(),
                    pool: Pool::new(&n.url, tls, settings.timeout, settings.max_connections)?,
                    answers: AnswerTimes::new(),
                    throttle: Throttle::new(),
                    urls: RwLock::new(Vec::new()),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Self {
            nodes,
            namespace: settings
                .namespace
                .as_deref()
                .map(namespace_header)
                .transpose()?,
            timeout: settings.timeout,
        })
    }

    /// The node whose origin (scheme, host, port) `location` has, if any.
    pub(super) fn by_origin(&self, location: &Url) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.url.origin() == location.origin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_that_is_no_header_value_is_an_error_naming_the_field() {
        assert!(namespace_header("team-a/child").is_ok());
        let e = namespace_header("team\na").expect_err("a newline is no header value");
        assert!(e.to_string().contains("openbao.namespace"), "{e}");
        assert_eq!(e.class().as_str(), "local_setup");
    }
}
