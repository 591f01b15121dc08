//! Host-side protection of the provider's secrets: no core dumps or same-user ptrace of the
//! serving process, and one permission check on the files that hold or steer key material,
//! shared by `check-config` (an error) and `serve` (a loud warning, so an upgraded host keeps
//! running). See docs/security.md.
use std::alloc::{GlobalAlloc, Layout, System};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{AuthSettings, ClientKey, Settings};

/// Marks the process non-dumpable (`PR_SET_DUMPABLE=0`): no core file holds plaintext, tokens
/// or the JWT even if `LimitCORE=` is raised, and `/proc/PID/mem` is readable by root only.
pub(crate) fn forbid_core_dumps() -> std::io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(std::io::Error::from)
}

/// The binary's global allocator: the system allocator, but every block is wiped before it is
/// freed. Plaintext, seeds, tokens and the JWT also pass through buffers we do not own (tonic's
/// and h2's frame buffers, hyper's, serde's); once those are freed no copy stays behind in the
/// heap. Blocks still in use (a live connection's read buffer) are named in docs/security.md.
pub struct WipingAllocator;

// SAFETY: every call is forwarded to `System` with the same layout; `dealloc` only writes
// zeros to the `layout.size()` bytes it is handing back, which the caller owns at that point.
// `realloc` keeps the default (alloc, copy, dealloc), so the old block is wiped too.
unsafe impl GlobalAlloc for WipingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Volatile writes (zeroize), so the compiler cannot drop them as dead stores before free.
        zeroize::Zeroize::zeroize(std::slice::from_raw_parts_mut(ptr, layout.size()));
        System.dealloc(ptr, layout)
    }
}

/// One file or directory whose mode lets others change or read what it protects.
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
}

fn mode_of(path: &Path) -> Option<u32> {
    // A missing file is reported by whatever reads it; here only modes are judged.
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

fn not_writable(what: &'static str, path: &Path, out: &mut Vec<PermissionProblem>) {
    let Some(mode) = mode_of(path) else { return };
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => "every user",
        (true, false) => "its group",
        (false, false) => return,
    };
    out.push(PermissionProblem::Writable {
        what,
        path: path.to_path_buf(),
        who,
        mode,
    });
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

/// The shared check: a group- or world-writable state directory or config file, or a
/// world-readable JWT, token or client key file.
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_judged_by_who_may_write_or_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, "x").expect("write");
        let mut out = Vec::new();
        for mode in [0o600, 0o640, 0o644] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
            not_writable("config file", &f, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        not_writable("config file", &f, &mut out);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o646)).expect("chmod");
        not_writable("config file", &f, &mut out);
        not_world_readable("JWT file", &f, &mut out);
        let text: Vec<String> = out.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("writable by its group (mode 0664)"),
            "{text:?}"
        );
        assert!(text[1].contains("writable by every user"), "{text:?}");
        assert!(text[2].contains("JWT file") && text[2].contains("readable by every user"));
        out.clear();
        not_writable("state directory", &dir.path().join("missing"), &mut out);
        assert!(out.is_empty(), "a missing path is not judged here");
    }

    #[test]
    fn non_dumpable_after_forbid_core_dumps() {
        forbid_core_dumps().expect("prctl");
        assert_eq!(nix::sys::prctl::get_dumpable(), Ok(false));
    }
}
