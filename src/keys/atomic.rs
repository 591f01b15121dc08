//! Replacing a small state file so that a reader sees the old or the new bytes, never a mix,
//! and a crash leaves no partial file behind: shared by the registry and the trim record.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An I/O failure of `write_atomic`, with the file it concerns.
#[derive(Debug)]
pub(super) struct WriteFailed {
    pub(super) path: PathBuf,
    pub(super) source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> WriteFailed + '_ {
    move |source| WriteFailed {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `dir/name` with mode 0600: temp file, fsync, rename, fsync dir. With `owner`
/// (uid, gid) the temp file is given to that owner before the rename, so the file never
/// appears with another one.
pub(super) fn write_atomic(
    dir: &Path,
    name: &str,
    data: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), WriteFailed> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = write_via(dir, &tmp, name, data, owner);
    if written.is_err() {
        // A partial temp file (full disk) is never read; do not let it hold the space.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn write_via(
    dir: &Path,
    tmp: &Path,
    name: &str,
    data: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), WriteFailed> {
    let target = dir.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(at(tmp))?;
    f.write_all(data).map_err(at(tmp))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(at(tmp))?;
    }
    f.sync_all().map_err(at(tmp))?;
    drop(f);
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600)).map_err(at(tmp))?;
    std::fs::rename(tmp, &target).map_err(at(&target))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))?;
    Ok(())
}
