//! Who may change or read the files that hold or steer key material (docs/security.md "File
//! permissions"). One check for `check-config` (refuses every problem), `serve` and reload
//! (refuse files the provider takes trust or code from, warn about the rest) and `doctor`.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{AuthSettings, ClientKey, Settings};

/// The account the packages create (systemd/bao-kms-provider.sysusers) and the unit runs as.
/// Its files pass the owner check even when `check-config` runs as root.
const SERVICE_USER: &str = "openbao-kms";

/// One file or directory whose mode or owner lets others change or read what it protects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PermissionProblem {
    #[error("{what} {} is writable by {who} (mode {mode:04o}); others could change it — chmod go-w", path.display())]
    Writable {
        what: &'static str,
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("{what} {} is readable by every user (mode {mode:04o}) — chmod 0600 or 0640", path.display())]
    WorldReadable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error(transparent)]
    Untrusted(#[from] UntrustedFile),
}

impl PermissionProblem {
    /// Whether `serve` refuses to start over it. The older rules only warn there, so that an
    /// upgraded host whose modes the previous release accepted keeps serving.
    pub(crate) fn refuses_serve(&self) -> bool {
        matches!(self, Self::Untrusted(_))
    }
}

/// A file the provider takes trust or code from (the OpenBao CA, the client certificate and
/// key, the PKCS#11 module it loads into its process) that someone other than root or the
/// service user could change: a swapped CA or module hands OpenBao traffic, or the process, to
/// whoever wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UntrustedFile {
    #[error("{field} {} is writable by {who} (mode {mode:04o}); expected writable by its owner only — chmod go-w", path.display())]
    Writable {
        field: &'static str,
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("{field} {} is owned by {owner}; expected owned by {expected} — chown root", path.display())]
    Owner {
        field: &'static str,
        path: PathBuf,
        owner: String,
        expected: String,
    },
}

/// `serve` (and a reload) refuses these files; exit 64, like a config error, so systemd does
/// not restart it in a loop (`RestartPreventExitStatus=64`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to use files others could change: {}", list(.0))]
pub(crate) struct UntrustedFiles(pub(crate) Vec<UntrustedFile>);

fn list(files: &[UntrustedFile]) -> String {
    let text: Vec<String> = files.iter().map(ToString::to_string).collect();
    text.join("; ")
}

fn mode_of(path: &Path) -> Option<u32> {
    // A missing file is reported by whatever reads it; here only modes are judged.
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Who besides the owner may write, from the mode bits.
fn writers(mode: u32) -> Option<&'static str> {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => Some("every user"),
        (true, false) => Some("its group"),
        (false, false) => None,
    }
}

fn not_writable(what: &'static str, path: &Path, out: &mut Vec<PermissionProblem>) {
    let Some(mode) = mode_of(path) else { return };
    if let Some(who) = writers(mode) {
        out.push(PermissionProblem::Writable {
            what,
            path: path.to_path_buf(),
            who,
            mode,
        });
    }
}

fn not_world_readable(what: &'static str, path: &Path, out: &mut Vec<PermissionProblem>) {
    let Some(mode) = mode_of(path) else { return };
    if mode & 0o004 != 0 {
        out.push(PermissionProblem::WorldReadable {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
}

/// The owners a trusted file may have: root, the user running this check, and the service user.
struct Owners(Vec<u32>);

impl Owners {
    fn current() -> Owners {
        let mut uids = vec![0, nix::unistd::geteuid().as_raw()];
        if let Ok(Some(u)) = nix::unistd::User::from_name(SERVICE_USER) {
            uids.push(u.uid.as_raw());
        }
        uids.sort_unstable();
        uids.dedup();
        Owners(uids)
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self.0.iter().map(|&uid| user_name(uid)).collect();
        names.join(" or ")
    }
}

/// `root`, `openbao-kms (uid 998)`, or `uid 1234` for an account without a name.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(_)) if uid == 0 => "root".to_owned(),
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

fn trusted(field: &'static str, path: &Path, owners: &Owners, out: &mut Vec<UntrustedFile>) {
    // Missing: whatever reads it reports that. The target of a symlink is what gets loaded.
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if let Some(who) = writers(mode) {
        out.push(UntrustedFile::Writable {
            field,
            path: path.to_path_buf(),
            who,
            mode,
        });
    }
    if !owners.0.contains(&meta.uid()) {
        out.push(UntrustedFile::Owner {
            field,
            path: path.to_path_buf(),
            owner: user_name(meta.uid()),
            expected: owners.describe(),
        });
    }
}

/// The files the provider takes trust or code from, each named by its config field.
fn trust_files(settings: &Settings) -> Vec<(&'static str, &Path)> {
    let mut files = Vec::new();
    if let Some(ca) = &settings.openbao.ca_file {
        files.push(("openbao.ca_file", ca.as_path()));
    }
    if let AuthSettings::Cert { cert_file, key, .. } = &settings.auth {
        files.push(("auth.cert.cert_file", cert_file.as_path()));
        match key {
            ClientKey::File(key_file) => files.push(("auth.cert.key_file", key_file.as_path())),
            ClientKey::Pkcs11(p11) => {
                files.push(("auth.cert.module_path", p11.module_path.as_path()))
            }
        }
    }
    files
}

fn untrusted(settings: &Settings) -> Vec<UntrustedFile> {
    let owners = Owners::current();
    let mut out = Vec::new();
    for (field, path) in trust_files(settings) {
        trusted(field, path, &owners, &mut out);
    }
    out
}

/// What `serve` and a reload refuse: a CA, client certificate or key, or PKCS#11 module that
/// is writable by group or others or owned by someone other than root or the service user.
pub(crate) fn refuse_untrusted(settings: &Settings) -> Result<(), UntrustedFiles> {
    let found = untrusted(settings);
    if found.is_empty() {
        Ok(())
    } else {
        Err(UntrustedFiles(found))
    }
}

/// The shared check: a group- or world-writable state directory or config file, a
/// world-readable JWT, token, client key or PIN file, and every untrusted file above.
pub(crate) fn check_permissions(settings: &Settings, config_path: &Path) -> Vec<PermissionProblem> {
    let mut out = Vec::new();
    not_writable("config file", config_path, &mut out);
    not_writable("state directory", &settings.server.state_dir, &mut out);
    match &settings.auth {
        AuthSettings::Jwt { jwt_file, .. } => not_world_readable("JWT file", jwt_file, &mut out),
        AuthSettings::Token { token_file } => {
            not_world_readable("token file", token_file, &mut out)
        }
        AuthSettings::Cert {
            key: ClientKey::File(key_file),
            ..
        } => not_world_readable("client key file", key_file, &mut out),
        AuthSettings::Cert {
            key: ClientKey::Pkcs11(p11),
            ..
        } => not_world_readable("PKCS#11 PIN file", &p11.pin_file, &mut out),
    }
    out.extend(untrusted(settings).into_iter().map(PermissionProblem::from));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn modes_are_judged_by_who_may_write_or_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, "x").expect("write");
        let mut out = Vec::new();
        for mode in [0o600, 0o640, 0o644] {
            chmod(&f, mode);
            not_writable("config file", &f, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        chmod(&f, 0o664);
        not_writable("config file", &f, &mut out);
        chmod(&f, 0o646);
        not_writable("config file", &f, &mut out);
        not_world_readable("JWT file", &f, &mut out);
        let text: Vec<String> = out.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("writable by its group (mode 0664)"),
            "{text:?}"
        );
        assert!(text[1].contains("writable by every user"), "{text:?}");
        assert!(text[2].contains("JWT file") && text[2].contains("readable by every user"));
        assert!(out.iter().all(|p| !p.refuses_serve()));
        out.clear();
        not_writable("state directory", &dir.path().join("missing"), &mut out);
        assert!(out.is_empty(), "a missing path is not judged here");
    }

    #[test]
    fn a_trusted_file_needs_a_trusted_owner_and_no_other_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "x").expect("write");
        let me = nix::unistd::geteuid().as_raw();
        let mut out = Vec::new();
        for mode in [0o600, 0o640, 0o644, 0o444] {
            chmod(&f, mode);
            trusted("openbao.ca_file", &f, &Owners(vec![me]), &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        chmod(&f, 0o664);
        trusted("openbao.ca_file", &f, &Owners(vec![me]), &mut out);
        chmod(&f, 0o644);
        let stranger = if me == 0 { 1 } else { 0 };
        trusted("openbao.ca_file", &f, &Owners(vec![stranger]), &mut out);
        let text: Vec<String> = out.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with(&format!(
                "openbao.ca_file {} is writable by its group (mode 0664)",
                f.display()
            )) && text[0].contains("expected writable by its owner only"),
            "{text:?}"
        );
        assert!(
            text[1].contains("is owned by") && text[1].contains("expected owned by"),
            "{text:?}"
        );
        out.clear();
        trusted(
            "openbao.ca_file",
            &dir.path().join("missing"),
            &Owners(vec![me]),
            &mut out,
        );
        assert!(out.is_empty(), "a missing path is not judged here");
    }
}
