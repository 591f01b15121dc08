//! The checks that talk to OpenBao, in rollout order: transport, server, identity, key,
//! mount, a real round trip, then the token's reach.
use std::path::PathBuf;
use std::time::Instant;

use rand::RngCore;

use super::{isolation, privilege, profile, Report};
use crate::config::{AuthSettings, ClientKey, Settings};
use crate::keys::trim::{self, TrimError};
use crate::keys::{Registry, Store, TrimRecord};
use crate::openbao::{self, Client, Error, KeyMetadata, ServerHealth};
use crate::provider::KeyWarning;

/// Associated data of the doctor's probe, so its ciphertext can never pass for a Secret's.
const PROBE_AAD: &[u8] = b"bao-kms-provider doctor probe";

pub(crate) async fn run(s: &Settings, other_configs: &[PathBuf], r: &mut Report) {
    if !pkcs11_key(s, r) {
        return;
    }
    let client = match Client::new(&s.openbao, &s.auth, &s.transit, s.server.kms_timeout) {
        Ok(c) => c,
        Err(e) => {
            r.fail("tls", e);
            r.skip_rest("tls");
            return;
        }
    };
    if !tls(s, r).await || !health(&client, r).await || !login(s, &client, r).await {
        return;
    }
    let policies = token(s, &client, r).await;
    let mount = &s.transit.mount_path;
    let meta = key_profile(s, &client, r).await;
    upsert(&client, mount, r).await;
    mount_identity(&client, mount, r).await;
    match &meta {
        Some(m) => round_trip(&client, m, r).await,
        None => r.line(
            super::Level::Skip,
            "round-trip",
            "not run because key-profile could not read the key",
        ),
    }
    privileges(s, &client, &policies, r).await;
    isolated(s, &client, other_configs, r).await;
}

/// For a key on a PKCS#11 token: the module loads, token and key are found, the key cannot
/// leave the token, and the certificate's public key is the key's (proved by a signature).
fn pkcs11_key(s: &Settings, r: &mut Report) -> bool {
    let AuthSettings::Cert {
        cert_file,
        key: ClientKey::Pkcs11(p11),
        ..
    } = &s.auth
    else {
        return true;
    };
    let k = match openbao::inspect_pkcs11_key(p11, cert_file, s.openbao.timeout) {
        Ok(k) => k,
        Err(e) => {
            r.fail("pkcs11-key", e);
            r.skip_rest("pkcs11-key");
            return false;
        }
    };
    let detail = format!(
        "{} on token {:?} via {} ({}); {} matches it",
        k.key,
        k.token,
        p11.module_path.display(),
        k.module,
        cert_file.display()
    );
    if k.extractable || !k.sensitive {
        r.fail(
            "pkcs11-key",
            format!(
                "{detail}; but the key is {}: it could leave the token (generate it on the token as sensitive and non-extractable)",
                if k.extractable { "extractable" } else { "not sensitive" }
            ),
        );
        r.skip_rest("pkcs11-key");
        return false;
    }
    let history = if k.never_extractable && k.always_sensitive {
        "never extractable, always sensitive"
    } else {
        "non-extractable and sensitive now (but not since generation)"
    };
    r.ok("pkcs11-key", format!("{detail}; key is {history}"));
    true
}

async fn tls(s: &Settings, r: &mut Report) -> bool {
    match openbao::tls_handshake(&s.openbao, &s.auth).await {
        Ok(None) => r.ok(
            "tls",
            format!(
                "{} is plain HTTP on the loopback interface (allowed only there); no TLS to verify",
                s.openbao.address
            ),
        ),
        Ok(Some(h)) => r.ok(
            "tls",
            format!(
                "{} {} with {}; certificate verified against {} for name {:?}",
                h.protocol,
                h.cipher_suite,
                h.endpoint,
                s.openbao
                    .ca_file
                    .as_deref()
                    .map_or_else(|| "no CA".into(), |p| p.display().to_string()),
                h.verified_name
            ),
        ),
        Err(e) => {
            r.fail("tls", e);
            r.skip_rest("tls");
            return false;
        }
    }
    true
}

async fn health(client: &Client, r: &mut Report) -> bool {
    let fatal = |r: &mut Report, detail: String| {
        r.fail("openbao-health", detail);
        r.skip_rest("openbao-health");
        false
    };
    match client.health().await {
        Ok(ServerHealth::Active) => r.ok(
            "openbao-health",
            "sys/health: initialized, unsealed, active",
        ),
        Ok(ServerHealth::Standby) => r.ok(
            "openbao-health",
            "sys/health: unsealed standby (requests are forwarded to the active node)",
        ),
        Ok(ServerHealth::Sealed) => {
            return fatal(r, "sys/health: sealed; unseal OpenBao first".into())
        }
        Ok(ServerHealth::Uninitialized) => return fatal(r, "sys/health: not initialized".into()),
        Ok(ServerHealth::Other(code)) => {
            return fatal(r, format!("sys/health answered HTTP {code}"))
        }
        Err(e) => return fatal(r, e.to_string()),
    }
    true
}

async fn login(s: &Settings, client: &Client, r: &mut Report) -> bool {
    let via = match &s.auth {
        AuthSettings::Jwt {
            mount_path, role, ..
        } => format!("jwt login at auth/{mount_path} as role {role:?}"),
        AuthSettings::Cert {
            mount_path, name, ..
        } => format!(
            "cert login at auth/{mount_path}{}",
            name.as_deref()
                .map(|n| format!(" as {n:?}"))
                .unwrap_or_default()
        ),
        AuthSettings::Token { token_file } => format!("token from {}", token_file.display()),
    };
    match client.login().await {
        Ok(()) => {
            r.ok("login", format!("{via} succeeded"));
            true
        }
        Err(e) => {
            let hint = match (&e, &s.auth) {
                (Error::BadRequest(_) | Error::PermissionDenied(_), AuthSettings::Jwt { .. }) => {
                    " (is the JWT current, and do its sub/aud match the role's bound_subject/bound_audiences?)"
                }
                (Error::BadRequest(_) | Error::PermissionDenied(_), AuthSettings::Cert { .. }) => {
                    " (does the cert auth role trust the client certificate's CA?)"
                }
                (Error::PermissionDenied(_) | Error::NoToken(_), AuthSettings::Token { .. }) => {
                    " (the token is invalid, revoked or expired)"
                }
                _ => "",
            };
            r.fail("login", format!("{via}: {e}{hint}"));
            r.skip_rest("login");
            false
        }
    }
}

/// Reports TTL and renewability; returns the token's policy names for the privilege check.
async fn token(s: &Settings, client: &Client, r: &mut Report) -> Vec<String> {
    let info = match client.token_info().await {
        Ok(i) => i,
        Err(e) => {
            r.fail("token", format!("auth/token/lookup-self: {e}"));
            return Vec::new();
        }
    };
    let ttl = info.ttl.map_or_else(
        || "never expires".to_owned(),
        |t| format!("expires in {}", humantime::format_duration(t)),
    );
    let detail = format!(
        "{ttl}, {}renewable, policies [{}]",
        if info.renewable { "" } else { "not " },
        info.policies.join(", ")
    );
    let static_token = matches!(s.auth, AuthSettings::Token { .. });
    match info.ttl {
        None => r.warn(
            "token",
            format!("{detail}; prefer short-lived tokens from jwt or cert auth"),
        ),
        Some(_) if static_token && !info.renewable => r.warn(
            "token",
            format!("{detail}; a static token that cannot be renewed stops the provider when it expires"),
        ),
        Some(t) if t < std::time::Duration::from_secs(300) => r.warn(
            "token",
            format!("{detail}; a TTL this short means a login every few minutes"),
        ),
        Some(_) => r.ok("token", detail),
    }
    info.policies
}

async fn key_profile(s: &Settings, client: &Client, r: &mut Report) -> Option<KeyMetadata> {
    let (mount, key) = (&s.transit.mount_path, &s.transit.key_name);
    let meta = match client.read_key().await {
        Ok(m) => m,
        Err(Error::NotFound(_)) => {
            r.fail(
                "key-profile",
                format!("{mount}/keys/{key} does not exist (create it: bao write -f {mount}/keys/{key} type={})", profile::KEY_TYPE),
            );
            return None;
        }
        Err(e @ Error::PermissionDenied(_)) => {
            r.fail(
                "key-profile",
                format!("GET {mount}/keys/{key}: {e} (the policy must grant read on {mount}/keys/{key})"),
            );
            return None;
        }
        Err(e) => {
            r.fail("key-profile", format!("GET {mount}/keys/{key}: {e}"));
            return None;
        }
    };
    let problems = profile::problems(&meta, mount, key);
    if !problems.is_empty() {
        r.fail(
            "key-profile",
            format!("{mount}/keys/{key}: {}", problems.join("; ")),
        );
        return Some(meta);
    }
    let summary = profile::summary(&meta, mount, key);
    let (registry, trim) = local_key_state(s);
    // A record that cannot be read silences nothing, and the warning says why.
    let unread = trim
        .as_ref()
        .err()
        .map(|e| format!("; {e}"))
        .unwrap_or_default();
    let trim = trim.ok().flatten();
    let min = meta.min_decryption_version;
    // Serving works either way; the operator must still know when older data is unreadable.
    match crate::provider::key_warnings(&registry, &meta, trim.as_ref()).first() {
        Some(KeyWarning::OlderVersionsUnreadable { .. }) => r.warn(
            "key-profile",
            format!("{summary}; versions below {min} cannot be decrypted: data written with them is unreadable (after a clean scan: bao-kms-provider state acknowledge-trim --min-decryption-version {min}){unread}"),
        ),
        Some(w) => r.warn("key-profile", format!("{summary}; {w}{unread}")),
        None => match trim.filter(|t| min > 1 && t.covers(min)) {
            Some(t) => r.ok(
                "key-profile",
                format!(
                    "{summary}; versions below {min} trimmed deliberately (recorded {})",
                    t.recorded()
                ),
            ),
            None => r.ok("key-profile", summary),
        },
    }
    Some(meta)
}

/// This host's key registry and trim record, as the probe loop reads them. A registry that
/// cannot be read counts as empty: the check then judges min_decryption_version alone
/// (`state verify` names a damaged registry).
fn local_key_state(s: &Settings) -> (Registry, Result<Option<TrimRecord>, TrimError>) {
    let scope = crate::provider::key_identity(s).fingerprint();
    let dir = &s.server.state_dir;
    let registry = Store::open_readonly(dir, &scope)
        .verify()
        .map(|v| v.registry)
        .unwrap_or_default();
    (registry, trim::load(dir, &scope))
}

async fn upsert(client: &Client, mount: &str, r: &mut Report) {
    match client.read_keys_config().await {
        Ok(c) if c.disable_upsert => r.ok("upsert", format!("{mount}/config/keys: disable_upsert=true")),
        Ok(_) => r.fail(
            "upsert",
            format!("{mount}/config/keys: disable_upsert=false, so encrypting under a mistyped key name creates a new key (fix: bao write {mount}/config/keys disable_upsert=true)"),
        ),
        Err(e) => r.fail("upsert", format!("GET {mount}/config/keys: {e}")),
    }
}

async fn mount_identity(client: &Client, mount: &str, r: &mut Report) {
    match client.read_mount().await {
        Ok(m) if m.mount_type == "transit" => r.ok(
            "mount",
            format!(
                "sys/mounts/{mount}: type transit, uuid {}, accessor {}",
                m.uuid, m.accessor
            ),
        ),
        Ok(m) => r.fail(
            "mount",
            format!(
                "sys/mounts/{mount}: type is {:?}, not transit",
                m.mount_type
            ),
        ),
        Err(e) => r.fail("mount", format!("GET sys/mounts/{mount}: {e}")),
    }
}

async fn round_trip(client: &Client, meta: &KeyMetadata, r: &mut Report) {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(seed.as_mut());
    let started = Instant::now();
    let result = async {
        let enc = client
            .encrypt(seed.as_ref(), PROBE_AAD, meta.latest_version)
            .await?;
        let back = client.decrypt(&enc.ciphertext, PROBE_AAD).await?;
        Ok::<_, Error>(back.as_slice() == seed.as_ref())
    }
    .await;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(true) => r.ok(
            "round-trip",
            format!(
                "encrypt+decrypt of 32 random bytes with version {} in {took:.1} ms",
                meta.latest_version
            ),
        ),
        Ok(false) => r.fail(
            "round-trip",
            "decrypt returned different bytes than were encrypted",
        ),
        Err(e) => r.fail("round-trip", e),
    }
}

async fn privileges(s: &Settings, client: &Client, policies: &[String], r: &mut Report) {
    let (mount, key) = (&s.transit.mount_path, &s.transit.key_name);
    let forbidden = privilege::forbidden(mount, key, policies);
    let needed = privilege::needed(mount, key, matches!(s.auth, AuthSettings::Token { .. }));
    let caps = match client
        .capabilities(&privilege::paths(&forbidden, &needed))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            r.fail(
                "least-privilege",
                format!("POST sys/capabilities-self: {e}"),
            );
            r.fail("capabilities", "unknown: sys/capabilities-self failed");
            return;
        }
    };
    let violations = privilege::violations(&forbidden, &caps);
    if violations.is_empty() {
        r.ok(
            "least-privilege",
            format!(
                "the token cannot rotate, export, back up, restore, trim, import, delete or reconfigure {mount}/keys/{key}, change the mount or rewrite its own policies ({} paths checked)",
                forbidden.len()
            ),
        );
    } else {
        r.fail(
            "least-privilege",
            format!(
                "the token can {}; grant only what `bao-kms-provider policy` prints",
                violations.join("; ")
            ),
        );
    }
    let (fatal, advisory) = privilege::missing(&needed, &caps);
    if !fatal.is_empty() {
        r.fail(
            "capabilities",
            format!("missing {}", [fatal, advisory].concat().join("; ")),
        );
    } else if !advisory.is_empty() {
        r.warn("capabilities", format!("missing {}", advisory.join("; ")));
    } else {
        r.ok(
            "capabilities",
            format!("read on {mount}/keys/{key}, update on {mount}/encrypt/{key} and {mount}/decrypt/{key}, token renew/lookup"),
        );
    }
}

/// Warns when the token reaches another cluster's seeds: the associated data is public (built
/// from the key_id stored beside the ciphertext), so only the policy keeps clusters apart.
async fn isolated(s: &Settings, client: &Client, other_configs: &[PathBuf], r: &mut Report) {
    let own = isolation::OwnKey {
        instance_id: &s.openbao.instance_id,
        namespace: s
            .openbao
            .namespace
            .as_deref()
            .unwrap_or("")
            .trim_matches('/'),
        mount: &s.transit.mount_path,
        key: &s.transit.key_name,
    };
    let mut others = Vec::new();
    for path in other_configs {
        match isolation::read_other(path) {
            Ok(o) => others.push(o),
            Err(e) => {
                r.fail("isolation", format!("--other-config {e}"));
                return;
            }
        }
    }
    let nonce = format!("{:016x}", rand::thread_rng().next_u64());
    let probes = isolation::probe_keys(own.key, &nonce);
    let mut paths: Vec<String> = probes
        .iter()
        .map(|k| isolation::decrypt_path(own.mount, k))
        .collect();
    paths.extend(
        others
            .iter()
            .map(|o| isolation::decrypt_path(&o.mount, &o.key)),
    );
    let caps = match client.capabilities(&paths).await {
        Ok(c) => c,
        Err(e) => {
            r.fail("isolation", format!("POST sys/capabilities-self: {e}"));
            return;
        }
    };
    let findings = isolation::findings(&own, &probes, &others, &caps);
    if !findings.is_empty() {
        for f in findings {
            r.warn("isolation", f);
        }
        return;
    }
    let mut detail = format!(
        "the token cannot decrypt with key names a glob would grant ({} probed)",
        probes.len()
    );
    let checked = others.len() - isolation::elsewhere(&own, &others).len();
    if checked > 0 {
        detail.push_str(&format!(
            " nor with the {checked} key(s) the --other-config files name"
        ));
    }
    for o in isolation::elsewhere(&own, &others) {
        detail.push_str(&format!(
            "; {} names another OpenBao (instance_id {:?}), not checked",
            o.file.display(),
            o.instance_id
        ));
    }
    detail.push_str(
        "; doctor cannot see other clusters' tokens, so a key they reach through their own policies is invisible here",
    );
    if own.key == isolation::SHARED_DEFAULT_KEY {
        detail.push_str(&format!(
            "; {} is the key name every cluster got before per-cluster keys: check with --other-config that no other cluster uses it",
            own.key
        ));
    }
    r.ok("isolation", detail);
}
