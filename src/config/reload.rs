//! What a reload (SIGHUP) does with each setting that changed: puts the new value in effect,
//! keeps the running one until a restart, or fails as a whole. One table, so the daemon, the
//! OpenBao client it rebuilds and `check-config --running` cannot disagree.
use super::settings::{AuthSettings, ClientKey, Pkcs11Settings, Settings};

/// What a reload does with one changed setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnReload {
    /// The reload puts the new value in effect.
    Apply,
    /// The running value stays until a restart: identity-bearing names (hashed into every
    /// key_id), the socket, the state directory, listeners and limits fixed at start.
    Restart,
    /// The reload fails as a whole and everything keeps its running value; only a restart
    /// applies the new configuration. A PKCS#11 module can be initialised once per process,
    /// so the OpenBao client refuses another module or token.
    Refuse,
}

/// One setting (or group of settings, such as `status`) and what a reload does with it.
struct Rule {
    field: &'static str,
    on_reload: OnReload,
    changed: fn(&Settings, &Settings) -> bool,
    /// Copies the setting from the new configuration; only `Apply` rules have one.
    take: Option<fn(&mut Settings, &Settings)>,
}

const fn restart(field: &'static str, changed: fn(&Settings, &Settings) -> bool) -> Rule {
    Rule {
        field,
        on_reload: OnReload::Restart,
        changed,
        take: None,
    }
}

const fn refuse(field: &'static str, changed: fn(&Settings, &Settings) -> bool) -> Rule {
    Rule {
        field,
        on_reload: OnReload::Refuse,
        changed,
        take: None,
    }
}

/// Both configurations keep the client key on a PKCS#11 token, each as `Some`.
fn pkcs11<'a>(
    a: &'a Settings,
    b: &'a Settings,
) -> Option<(&'a Pkcs11Settings, &'a Pkcs11Settings)> {
    match (&a.auth, &b.auth) {
        (
            AuthSettings::Cert {
                key: ClientKey::Pkcs11(a),
                ..
            },
            AuthSettings::Cert {
                key: ClientKey::Pkcs11(b),
                ..
            },
        ) => Some((a, b)),
        _ => None,
    }
}

const fn apply(
    field: &'static str,
    changed: fn(&Settings, &Settings) -> bool,
    take: fn(&mut Settings, &Settings),
) -> Rule {
    Rule {
        field,
        on_reload: OnReload::Apply,
        changed,
        take: Some(take),
    }
}

/// Every setting, in the order a reload names them.
const RULES: &[Rule] = &[
    apply(
        "openbao.address",
        |a, b| a.openbao.address != b.openbao.address || a.openbao.nodes != b.openbao.nodes,
        |s, new| {
            s.openbao.address = new.openbao.address.clone();
            s.openbao.nodes = new.openbao.nodes.clone();
        },
    ),
    apply(
        "openbao.ca_file",
        |a, b| a.openbao.ca_file != b.openbao.ca_file,
        |s, new| s.openbao.ca_file = new.openbao.ca_file.clone(),
    ),
    apply(
        "openbao.tls_server_name",
        |a, b| a.openbao.tls_server_name != b.openbao.tls_server_name,
        |s, new| s.openbao.tls_server_name = new.openbao.tls_server_name.clone(),
    ),
    apply(
        "openbao.timeout",
        |a, b| a.openbao.timeout != b.openbao.timeout,
        |s, new| s.openbao.timeout = new.openbao.timeout,
    ),
    apply(
        "auth",
        |a, b| a.auth != b.auth,
        |s, new| s.auth = new.auth.clone(),
    ),
    refuse("auth.cert.module_path", |a, b| {
        pkcs11(a, b).is_some_and(|(a, b)| a.module_path != b.module_path)
    }),
    refuse("auth.cert.token_label", |a, b| {
        pkcs11(a, b).is_some_and(|(a, b)| a.token_label != b.token_label)
    }),
    restart("openbao.instance_id", |a, b| {
        a.openbao.instance_id != b.openbao.instance_id
    }),
    restart("openbao.namespace", |a, b| {
        a.openbao.namespace != b.openbao.namespace
    }),
    restart("openbao.max_connections", |a, b| {
        a.openbao.max_connections != b.openbao.max_connections
    }),
    restart("openbao.retry_budget_percent", |a, b| {
        a.openbao.retry_budget.percent != b.openbao.retry_budget.percent
    }),
    restart("openbao.retry_budget_min_per_second", |a, b| {
        a.openbao.retry_budget.min_per_second != b.openbao.retry_budget.min_per_second
    }),
    restart("transit.mount_path", |a, b| {
        a.transit.mount_path != b.transit.mount_path
    }),
    restart("transit.key_name", |a, b| {
        a.transit.key_name != b.transit.key_name
    }),
    restart("transit.key_id_scope", |a, b| {
        a.transit.key_id_scope != b.transit.key_id_scope
    }),
    restart("server.socket_path", |a, b| {
        a.server.socket_path != b.server.socket_path
    }),
    restart("server.socket_mode", |a, b| {
        a.server.socket_mode != b.server.socket_mode
    }),
    restart("server.state_dir", |a, b| {
        a.server.state_dir != b.server.state_dir
    }),
    restart("server.kms_timeout", |a, b| {
        a.server.kms_timeout != b.server.kms_timeout
    }),
    restart("server.max_concurrent_streams", |a, b| {
        a.server.max_concurrent_streams != b.server.max_concurrent_streams
    }),
    restart("server.idle_timeout", |a, b| {
        a.server.idle_timeout != b.server.idle_timeout
    }),
    restart("server.drain_timeout", |a, b| {
        a.server.drain_timeout != b.server.drain_timeout
    }),
    restart("server.start_timeout", |a, b| {
        a.server.start_timeout != b.server.start_timeout
    }),
    restart("telemetry.metrics_address", |a, b| {
        a.telemetry.metrics_address != b.telemetry.metrics_address
    }),
    restart("telemetry.health_address", |a, b| {
        a.telemetry.health_address != b.telemetry.health_address
    }),
    restart("telemetry.max_connections", |a, b| {
        a.telemetry.max_connections != b.telemetry.max_connections
    }),
    restart("status", |a, b| {
        a.status.probe_interval != b.status.probe_interval
            || a.status.deep_probe_interval != b.status.deep_probe_interval
            || a.status.max_staleness != b.status.max_staleness
            || a.status.unhealthy_after != b.status.unhealthy_after
    }),
    restart("rotation", |a, b| {
        a.rotation.stable_observations != b.rotation.stable_observations
            || a.rotation.activation_delay != b.rotation.activation_delay
    }),
    restart("log", |a, b| {
        a.log.level != b.log.level || a.log.format != b.log.format
    }),
    restart("auth.expiry_warning", |a, b| {
        a.auth_expiry_warning != b.auth_expiry_warning
    }),
];

/// The settings that differ between the running and a new configuration, each with what a
/// reload does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReloadDiff {
    changes: Vec<(&'static str, OnReload)>,
}

impl ReloadDiff {
    pub(crate) fn between(running: &Settings, new: &Settings) -> Self {
        let changes = RULES
            .iter()
            .filter(|r| (r.changed)(running, new))
            .map(|r| (r.field, r.on_reload))
            .collect();
        Self { changes }
    }

    /// The changed settings that `on_reload` describes, in the table's order.
    pub(crate) fn fields(&self, on_reload: OnReload) -> Vec<&'static str> {
        self.changes
            .iter()
            .filter(|(_, o)| *o == on_reload)
            .map(|(f, _)| *f)
            .collect()
    }
}

/// The settings in effect after a reload: `new` where the reload applies it, `running` where
/// a restart is needed.
pub(crate) fn reloaded(running: &Settings, new: &Settings) -> Settings {
    let mut out = running.clone();
    for take in RULES.iter().filter_map(|r| r.take) {
        take(&mut out, new);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, validate, Environment};

    const RUNNING: &str = r#"
[server]
socket_path = "/run/a/kms.sock"
state_dir = "/var/lib/a"
[openbao]
address = "https://a.example:8200"
ca_file = "/etc/a/ca.pem"
instance_id = "a"
[auth]
method = "jwt"
[auth.jwt]
mount_path = "jwt"
role = "a"
jwt_file = "/var/lib/a/identity.jwt"
[transit]
mount_path = "transit"
key_name = "a"
[transit.key_id_scope]
provider_name = "a"
cluster_id = "a"
transit_mount_id = "a"
key_lineage_id = "a"
"#;

    /// Every setting the table names differs from `RUNNING`.
    const NEW: &str = r#"
[server]
socket_path = "/run/b/kms.sock"
socket_mode = "0660"
state_dir = "/var/lib/b"
drain_timeout = "7s"
start_timeout = "77s"
kms_timeout = "4s"
max_concurrent_streams = 17
idle_timeout = "17m"
[openbao]
address = "https://b.example:8200"
ca_file = "/etc/b/ca.pem"
tls_server_name = "b.internal"
namespace = "b"
timeout = "3s"
instance_id = "b"
max_connections = 17
retry_budget_percent = 17
retry_budget_min_per_second = 17
[auth]
method = "jwt"
expiry_warning = "7h"
[auth.jwt]
mount_path = "jwt"
role = "b"
jwt_file = "/var/lib/b/identity.jwt"
[transit]
mount_path = "transit-b"
key_name = "b"
[transit.key_id_scope]
provider_name = "b"
cluster_id = "b"
transit_mount_id = "b"
key_lineage_id = "b"
[status]
probe_interval = "7s"
[rotation]
stable_observations = 7
[log]
level = "debug"
[telemetry]
metrics_address = "127.0.0.1:9101"
health_address = "127.0.0.1:9102"
max_connections = 7
"#;

    fn settings(text: &str) -> Settings {
        let env = Environment {
            credentials_directory: None,
        };
        let raw = parse(text, std::path::Path::new("test.toml")).expect("parses");
        validate(&raw, &env).expect("valid")
    }

    #[test]
    fn a_reload_applies_addresses_tls_timeout_and_auth_and_names_the_rest() {
        let (a, b) = (settings(RUNNING), settings(NEW));
        let diff = ReloadDiff::between(&a, &b);
        assert_eq!(
            diff.fields(OnReload::Apply),
            [
                "openbao.address",
                "openbao.ca_file",
                "openbao.tls_server_name",
                "openbao.timeout",
                "auth"
            ]
        );
        let restart = diff.fields(OnReload::Restart);
        let expected: Vec<&str> = RULES
            .iter()
            .filter(|r| r.on_reload == OnReload::Restart)
            .map(|r| r.field)
            .collect();
        assert_eq!(restart, expected, "every setting differs in NEW");
        assert_eq!(ReloadDiff::between(&a, &a), ReloadDiff { changes: vec![] });
    }

    /// What the daemon and the OpenBao client run with after a reload is what the diff says.
    #[test]
    fn reloaded_settings_take_what_applies_and_keep_what_needs_a_restart() {
        let (a, b) = (settings(RUNNING), settings(NEW));
        let now = reloaded(&a, &b);
        let after = ReloadDiff::between(&now, &b);
        assert!(after.fields(OnReload::Apply).is_empty(), "{after:?}");
        assert_eq!(
            after.fields(OnReload::Restart),
            ReloadDiff::between(&a, &b).fields(OnReload::Restart),
            "a second reload names the same fields: their running values stayed"
        );
    }

    /// Another token or module fails the reload in the OpenBao client; a first one does not.
    #[test]
    fn another_pkcs11_token_or_module_is_refused_a_first_one_applies() {
        let jwt = "[auth]\nmethod = \"jwt\"\n[auth.jwt]\nmount_path = \"jwt\"\nrole = \"a\"\njwt_file = \"/var/lib/a/identity.jwt\"\n";
        let token = |label: &str| {
            RUNNING.replace(
                jwt,
                &format!("[auth]\nmethod = \"cert\"\n[auth.cert]\ncert_file = \"/etc/a/client.pem\"\nkey_source = \"pkcs11\"\nmodule_path = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"{label}\"\nkey_label = \"client\"\npin_file = \"/etc/a/token.pin\"\n"),
            )
        };
        assert!(RUNNING.contains(jwt));
        let (a, b) = (settings(&token("kms")), settings(&token("other")));
        let diff = ReloadDiff::between(&a, &b);
        assert_eq!(diff.fields(OnReload::Refuse), ["auth.cert.token_label"]);
        let first = ReloadDiff::between(&settings(RUNNING), &b);
        assert!(first.fields(OnReload::Refuse).is_empty(), "{first:?}");
        assert_eq!(first.fields(OnReload::Apply), ["auth"]);
    }
}
