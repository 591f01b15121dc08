//! `credential-expiry`: when the JWT or client certificate the provider logs in with ends,
//! against `auth.expiry_warning`. Local files only, so it reports even when OpenBao is down.
use std::time::{Duration, SystemTime};

use super::Report;
use crate::config::Settings;
use crate::openbao::{credential_expiry, Credential};

const CHECK: &str = "credential-expiry";

pub(super) fn check(s: &Settings, r: &mut Report) {
    let margin = s.auth_expiry_warning;
    let e = match credential_expiry(&s.auth) {
        Ok(Some(e)) => e,
        Ok(None) if s.auth.method_name() == "token" => {
            r.ok(
                CHECK,
                "token auth: no JWT or client certificate (the token check reports its TTL)",
            );
            return;
        }
        Ok(None) => {
            r.warn(
                CHECK,
                "the JWT has no exp claim: it never expires, so a copy stays usable until the auth role stops accepting it",
            );
            return;
        }
        Err(e) => {
            r.fail(CHECK, e);
            return;
        }
    };
    let what = match e.credential {
        Credential::Jwt => "JWT",
        Credential::ClientCertificate => "client certificate",
    };
    let at = humantime::format_rfc3339_seconds(e.not_after);
    let whole = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
    let now = SystemTime::now();
    match e.remaining(now) {
        None => {
            let ago = now.duration_since(e.not_after).unwrap_or_default();
            r.fail(
                CHECK,
                format!(
                    "{what} {} expired at {at} ({} ago): logins fail until it is replaced",
                    e.path.display(),
                    whole(ago)
                ),
            );
        }
        Some(left) if left <= margin => r.warn(
            CHECK,
            format!(
                "{what} {} expires at {at}, in {}: within auth.expiry_warning ({}); replace it",
                e.path.display(),
                whole(left),
                humantime::format_duration(margin)
            ),
        ),
        Some(left) => r.ok(
            CHECK,
            format!(
                "{what} {} expires at {at}, in {} (warning from {} before)",
                e.path.display(),
                whole(left),
                humantime::format_duration(margin)
            ),
        ),
    }
}
