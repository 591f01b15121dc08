//! `check-config` via the real binary: every invalid config field gives a message naming it
//! (exit 64), and `--running` names what a reload would apply and what needs a restart.
pub mod common;

use std::process::Command;

const VALID: &str = r#"
[server]
socket_path = "/run/openbao-kms/kms.sock"
socket_mode = "0600"
state_dir = "/var/lib/openbao-kms"

[openbao]
address = "https://openbao.example.internal:8200"
ca_file = "/etc/openbao-kms/tls/openbao-ca.pem"
timeout = "2s"
instance_id = "openbao-prod"

[auth]
method = "jwt"
expiry_warning = "24h"
[auth.jwt]
mount_path = "jwt"
role = "bao-kms-provider"
jwt_file = "/var/lib/openbao-kms/identity.jwt"

[transit]
mount_path = "transit"
key_name = "k8s-etcd"
[transit.key_id_scope]
provider_name = "openbao-kms"
cluster_id = "prod-eu-1"
transit_mount_id = "transit-prod"
key_lineage_id = "3f6d0a1c"

[status]
probe_interval = "30s"
deep_probe_interval = "5m"
max_staleness = "2m"
"#;

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(common::provider_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Replace the line starting with `key =` inside `[section]` by `key = value`.
fn with(section: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut current = String::new();
    let mut done = false;
    for line in VALID.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').to_owned();
        }
        if !done && current == section && t.starts_with(&format!("{key} =")) {
            out.push_str(&format!("{key} = {value}\n"));
            done = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(done, "no {section}.{key} in the base config");
    out
}

#[test]
fn the_documented_example_is_valid_and_printed_without_secrets() {
    let (code, stdout, stderr) = check(VALID);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("valid") && stdout.contains("instance_id = \"openbao-prod\""));
}

#[test]
fn each_invalid_field_is_named() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "server",
            "socket_path",
            "\"relative/kms.sock\"",
            "server.socket_path",
        ),
        ("server", "socket_mode", "\"0666\"", "server.socket_mode"),
        ("server", "socket_mode", "\"rw\"", "server.socket_mode"),
        ("server", "state_dir", "\"\"", "server.state_dir"),
        (
            "openbao",
            "address",
            "\"http://openbao.example.internal:8200\"",
            "openbao.address",
        ),
        ("openbao", "address", "\"not a url\"", "openbao.address"),
        ("openbao", "address", "\"\"", "openbao.address"),
        ("openbao", "ca_file", "\"\"", "openbao.ca_file"),
        ("openbao", "timeout", "\"2\"", "openbao.timeout"),
        ("openbao", "timeout", "\"10m\"", "openbao.timeout"),
        ("openbao", "instance_id", "\"\"", "openbao.instance_id"),
        (
            "auth.jwt",
            "jwt_file",
            "\"identity.jwt\"",
            "auth.jwt.jwt_file",
        ),
        ("auth.jwt", "role", "\"\"", "auth.jwt.role"),
        (
            "auth",
            "expiry_warning",
            "\"1 fortnight\"",
            "auth.expiry_warning",
        ),
        ("auth", "expiry_warning", "\"400d\"", "auth.expiry_warning"),
        ("auth.jwt", "mount_path", "\"a//b\"", "auth.jwt.mount_path"),
        ("transit", "key_name", "\"k8s/etcd\"", "transit.key_name"),
        // `.` and `..` would be normalised away in the request URL and address another path.
        ("transit", "key_name", "\".\"", "transit.key_name"),
        ("transit", "key_name", "\"..\"", "transit.key_name"),
        ("transit", "mount_path", "\".\"", "transit.mount_path"),
        ("transit", "mount_path", "\"..\"", "transit.mount_path"),
        (
            "transit",
            "mount_path",
            "\"teams/./transit\"",
            "transit.mount_path",
        ),
        (
            "transit",
            "mount_path",
            "\"teams/../transit\"",
            "transit.mount_path",
        ),
        ("auth.jwt", "mount_path", "\"jwt/.\"", "auth.jwt.mount_path"),
        (
            "transit.key_id_scope",
            "provider_name",
            "\"openbao:kms\"",
            "transit.key_id_scope.provider_name",
        ),
        (
            "transit.key_id_scope",
            "cluster_id",
            "\"\"",
            "transit.key_id_scope.cluster_id",
        ),
        (
            "transit.key_id_scope",
            "key_lineage_id",
            "\"\"",
            "transit.key_id_scope.key_lineage_id",
        ),
        (
            "status",
            "probe_interval",
            "\"5 parsecs\"",
            "status.probe_interval",
        ),
        (
            "status",
            "deep_probe_interval",
            "\"10s\"",
            "status.deep_probe_interval",
        ),
        ("status", "max_staleness", "\"30s\"", "status.max_staleness"),
    ];
    for (section, key, value, field) in cases {
        let (code, _, stderr) = check(&with(section, key, value));
        assert_eq!(
            code, 64,
            "{section}.{key} = {value}: expected exit 64, stderr: {stderr}"
        );
        assert!(
            stderr.contains(field),
            "{section}.{key} = {value}: message must name {field}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn unknown_and_mistyped_fields_are_rejected_by_name() {
    let (code, _, stderr) =
        check(&VALID.replace("timeout = \"2s\"", "timeout = \"2s\"\ntimout = \"3s\""));
    assert_eq!(code, 64);
    assert!(stderr.contains("timout"), "{stderr}");
    let (code, _, stderr) = check(&VALID.replace("method = \"jwt\"", "method = \"kerberos\""));
    assert_eq!(code, 64);
    assert!(
        stderr.contains("kerberos") && stderr.contains("method"),
        "{stderr}"
    );
    let (code, _, stderr) = check(&format!("{VALID}\n[rotation]\nstable_observations = 0\n"));
    assert_eq!(code, 64);
    assert!(stderr.contains("rotation.stable_observations"), "{stderr}");
    let (code, _, stderr) = check(&format!(
        "{VALID}\n[telemetry]\nmetrics_address = \"localhost\"\n"
    ));
    assert_eq!(code, 64);
    assert!(stderr.contains("telemetry.metrics_address"), "{stderr}");
    for n in ["0", "1025"] {
        let (code, _, stderr) = check(&format!("{VALID}\n[telemetry]\nmax_connections = {n}\n"));
        assert_eq!(code, 64, "max_connections = {n}");
        assert!(stderr.contains("telemetry.max_connections"), "{stderr}");
    }
    let (code, _, stderr) = check("this is not toml = = =");
    assert_eq!(code, 64);
    assert!(stderr.contains("config.toml"), "names the file: {stderr}");
}

#[test]
fn missing_file_and_credentials_directory_are_explained() {
    let out = Command::new(common::provider_bin())
        .args(["check-config", "--config", "/nonexistent/config.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config.toml"));
    let (code, _, stderr) = check(&with("auth.jwt", "jwt_file", "\"%d/identity.jwt\""));
    assert_eq!(code, 64);
    assert!(
        stderr.contains("auth.jwt.jwt_file") && stderr.contains("CREDENTIALS_DIRECTORY"),
        "{stderr}"
    );
}

#[test]
fn http_is_allowed_to_loopback_only() {
    let text = with("openbao", "address", "\"http://127.0.0.1:8200\"")
        .replace("ca_file = \"/etc/openbao-kms/tls/openbao-ca.pem\"\n", "");
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, _) = check(&with("openbao", "address", "\"http://[::1]:8200\""));
    assert_eq!(code, 0);
}

#[test]
fn address_takes_a_string_a_list_or_tables_with_their_own_server_name() {
    let list = r#"["https://bao-1:8200", "https://bao-2:8200", { url = "https://10.0.0.3:8200", tls_server_name = "bao-3.example" }]"#;
    let (code, stdout, stderr) = check(&with("openbao", "address", list));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("bao-3.example"), "{stdout}");
    for (value, expect) in [
        ("[]", "openbao.address"),
        (r#"["https://a:8200", "https://a:8200"]"#, "listed twice"),
        (
            r#"["https://a:8200", "http://127.0.0.1:8200"]"#,
            "mixes http",
        ),
        (r#"["https://a:8200", "http://b:8200"]"#, "loopback"),
        (
            r#"[{ url = "https://a:8200", tls_server_name = "bad name!" }]"#,
            "tls_server_name",
        ),
        (
            r#"[{ url = "https://a:8200", servername = "x" }]"#,
            "openbao.address",
        ),
    ] {
        let (code, _, stderr) = check(&with("openbao", "address", value));
        assert_eq!(code, 64, "{value}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{value}: expected {expect:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn new_rules_are_errors_in_check_config_and_warnings_in_serve() {
    // openbao.timeout must leave room inside server.kms_timeout for another node.
    let slow = with("openbao", "timeout", "\"3s\"");
    let (code, _, stderr) = check(&slow);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("openbao.timeout") && stderr.contains("server.kms_timeout"),
        "{stderr}"
    );
    // An activation_delay shorter than two probe intervals lets hosts disagree on the key_id.
    let fast = format!("{VALID}\n[rotation]\nactivation_delay = \"30s\"\n");
    let (code, _, stderr) = check(&fast);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("rotation.activation_delay"), "{stderr}");
    let ok = format!("{VALID}\n[rotation]\nactivation_delay = \"1m\"\n");
    let (code, _, stderr) = check(&ok);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = check(&with(
        "status",
        "max_staleness",
        "\"2m\"\nunhealthy_after = 0",
    ));
    assert_eq!(code, 64);
    assert!(stderr.contains("status.unhealthy_after"), "{stderr}");
    let (code, _, stderr) = check(&with("openbao", "timeout", "\"2s\"\nmax_connections = 0"));
    assert_eq!(code, 64);
    assert!(stderr.contains("openbao.max_connections"), "{stderr}");
}

#[test]
fn a_namespace_that_cannot_be_sent_as_a_header_is_named() {
    let namespace = |value: &str| {
        with(
            "openbao",
            "instance_id",
            &format!("\"openbao-prod\"\nnamespace = {value}"),
        )
    };
    let (code, stdout, stderr) = check(&namespace("\"team-a/child/\""));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("team-a/child"), "{stdout}");
    let (code, _, stderr) = check(&namespace("\"team\\na\""));
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("openbao.namespace"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

const PKCS11_AUTH: &str = "[auth]\nmethod = \"cert\"\n[auth.cert]\ncert_file = \"/etc/openbao-kms/tls/client.pem\"\nkey_source = \"pkcs11\"\nmodule_path = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"kms\"\nkey_label = \"client\"\npin_file = \"/etc/openbao-kms/token.pin\"\n";

fn pkcs11_config(auth: &str) -> String {
    let jwt = "[auth]\nmethod = \"jwt\"\nexpiry_warning = \"24h\"\n[auth.jwt]\nmount_path = \"jwt\"\nrole = \"bao-kms-provider\"\njwt_file = \"/var/lib/openbao-kms/identity.jwt\"\n";
    assert!(VALID.contains(jwt));
    VALID.replace(jwt, auth)
}

#[test]
fn pkcs11_key_source_fields_are_checked_by_name() {
    let (code, stdout, stderr) = check(&pkcs11_config(PKCS11_AUTH));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("key_source = \"pkcs11\""), "{stdout}");
    // The files do not exist here: check-config says so without needing the token.
    assert!(stdout.contains("auth.cert.pin_file"), "{stdout}");
    let cases: &[(&str, &str, &str)] = &[
        (
            "key_label = \"client\"",
            "key_label = \"client\"\nkey_file = \"/k.pem\"",
            "auth.cert.key_file",
        ),
        (
            "module_path = \"/usr/lib/softhsm/libsofthsm2.so\"",
            "module_path = \"libsofthsm2.so\"",
            "auth.cert.module_path",
        ),
        (
            "token_label = \"kms\"",
            "token_label = \"\"",
            "auth.cert.token_label",
        ),
        (
            "token_label = \"kms\"",
            "token_label = \"a-label-that-is-longer-than-32-bytes\"",
            "auth.cert.token_label",
        ),
        (
            "key_label = \"client\"",
            "key_label = \"client\"\nkey_object_id = \"01\"",
            "auth.cert.key_label",
        ),
        ("key_label = \"client\"", "", "auth.cert.key_label"),
        (
            "key_label = \"client\"",
            "key_object_id = \"0g\"",
            "auth.cert.key_object_id",
        ),
        (
            "key_label = \"client\"",
            "key_object_id = \"abc\"",
            "auth.cert.key_object_id",
        ),
        (
            "pin_file = \"/etc/openbao-kms/token.pin\"",
            "pin_file = \"token.pin\"",
            "auth.cert.pin_file",
        ),
        (
            "pin_file = \"/etc/openbao-kms/token.pin\"",
            "pin_file = \"%d/token.pin\"",
            "CREDENTIALS_DIRECTORY",
        ),
        (
            "key_source = \"pkcs11\"",
            "key_source = \"file\"",
            "auth.cert.module_path",
        ),
        (
            "key_source = \"pkcs11\"",
            "key_source = \"tpm\"",
            "key_source",
        ),
    ];
    for (from, to, field) in cases {
        let (code, _, stderr) = check(&pkcs11_config(&PKCS11_AUTH.replace(from, to)));
        assert_eq!(code, 64, "{to}: expected exit 64, stderr: {stderr}");
        assert!(stderr.contains(field), "{to}: must name {field}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (code, _, stderr) = check(&pkcs11_config(
        &PKCS11_AUTH.replace("key_label = \"client\"", "key_object_id = \"a1:B2\""),
    ));
    assert_eq!(code, 0, "CKA_ID as pkcs11-tool prints it: {stderr}");
}

#[test]
fn running_names_what_a_reload_applies_and_what_needs_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, new) = (dir.path().join("running.toml"), dir.path().join("new.toml"));
    std::fs::write(&running, VALID).expect("write");
    let changed = with("openbao", "timeout", "\"1500ms\"")
        .replace("[status]", "[status]\nunhealthy_after = 5")
        .replace(
            "/var/lib/openbao-kms\"\n\n[openbao]",
            "/var/lib/openbao-kms\"\ndrain_timeout = \"9s\"\n\n[openbao]",
        );
    std::fs::write(&new, changed).expect("write");
    let run = |against: &std::path::Path| {
        let out = Command::new(common::provider_bin())
            .args(["check-config", "--config"])
            .arg(&new)
            .arg("--running")
            .arg(against)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stdout) = run(&running);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("# reload applies: openbao.timeout\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "# restart needed: server.drain_timeout, status (a reload keeps the running values)\n"
        ),
        "{stdout}"
    );
    let (code, stdout) = run(&new);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("# no setting differs from the running configuration"),
        "{stdout}"
    );
    // Another PKCS#11 token: the OpenBao client refuses the whole reload.
    std::fs::write(&running, pkcs11_config(PKCS11_AUTH)).expect("write");
    let other = PKCS11_AUTH.replace("token_label = \"kms\"", "token_label = \"other\"");
    std::fs::write(&new, pkcs11_config(&other)).expect("write");
    let (code, stdout) = run(&running);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(
            "# reload refused: auth.cert.token_label (nothing changes until a restart)\n"
        ) && !stdout.contains("# reload applies"),
        "{stdout}"
    );
}
