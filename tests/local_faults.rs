//! Local faults on the state directory (a real tmpfs, made full and read-only by the test, as
//! root): encryption never stops, every known version keeps decrypting, a promotion waits for
//! the disk, and a read-only state directory at start serves degraded instead of exiting.
pub mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bao_kms_provider::pb;
use common::*;

/// A small tmpfs mounted for one test; unmounted (lazily) when dropped, even on panic.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mkdir");
        let target = path.to_string_lossy().to_string();
        run(
            "mount",
            &["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", &target],
        );
        Tmpfs { _dir: dir, path }
    }

    fn remount(&self, opt: &str) {
        run(
            "mount",
            &[
                "-o",
                &format!("remount,{opt}"),
                &self.path.to_string_lossy(),
            ],
        );
    }

    /// Read-only while the provider holds files open for writing (a plain remount would be
    /// refused as busy): a read-only bind mount on top, as a file system gone read-only looks.
    fn bind_read_only(&self) {
        let path = self.path.to_string_lossy().to_string();
        run("mount", &["--bind", &path, &path]);
        run("mount", &["-o", "remount,bind,ro", &path]);
    }

    fn unbind(&self) {
        run("umount", &[&self.path.to_string_lossy()]);
    }

    /// Writes a filler file until the file system reports ENOSPC.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join("filler")).expect("filler");
        let block = vec![0u8; 4096];
        loop {
            if let Err(e) = f.write_all(&block).and_then(|()| f.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }

    fn unfill(&self) {
        std::fs::remove_file(self.path.join("filler")).expect("remove filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The bind mount (if a test failed while it was on), then the tmpfs.
        for _ in 0..2 {
            let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        }
    }
}

fn registry_active_version(state: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(state.join("key-registry.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["registry"]["records"]
        .as_object()?
        .values()
        .find(|r| r["state"] == "active")
        .and_then(|r| r["version"].as_u64())
}

async fn metric(p: &Provider, name: &str) -> Option<f64> {
    let (_, body) = p.http_get(p.metrics_port, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

async fn round_trip(p: &Provider, seed: &[u8]) -> pb::EncryptResponse {
    let mut c = p.client().await;
    let enc = encrypt(&mut c, seed).await;
    let back = c
        .decrypt(decrypt_request(&enc))
        .await
        .expect("Decrypt")
        .into_inner()
        .plaintext;
    assert_eq!(back, seed);
    enc
}

#[tokio::test]
async fn full_then_read_only_state_dir_during_a_rotation_never_stops_encryption() {
    let bao = Bao::start().await;
    let fs = Tmpfs::mount();
    let state = fs.path.join("state");
    let mut o = ProviderOptions::new(&bao);
    o.state_dir = Some(state.clone());
    let p = Provider::start(&o).await;
    let v1_key_id = p.status().await.key_id;
    let old = round_trip(&p, &[1u8; 32]).await;
    assert_eq!(registry_active_version(&state), Some(1));

    // Disk full, then OpenBao rotates: the provider sees v2 but cannot save it.
    fs.fill();
    bao.rotate().await;
    p.wait_status("healthz names the unsaved registry", |s| {
        s.healthz.contains("key registry not saved")
    })
    .await;
    assert_eq!(metric(&p, "openbao_kms_registry_unsaved").await, Some(1.0));
    // Past max_staleness (3s) Encrypt still works, with the saved active key (v1): time must
    // pass, there is no state to wait for.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = p.status().await;
    assert_eq!(status.key_id, v1_key_id, "the promotion is held back");
    let during = round_trip(&p, &[2u8; 32]).await;
    assert_eq!(during.key_id, v1_key_id);

    // Another host (its own, writable state dir) already writes with v2: we decrypt it.
    let mut o2 = ProviderOptions::new(&bao);
    let other_state = tempfile::tempdir().expect("tempdir");
    o2.state_dir = Some(other_state.path().join("state"));
    let other = Provider::start(&o2).await;
    let mut oc = other.client().await;
    let v2 = encrypt(&mut oc, &[3u8; 32]).await;
    assert_ne!(v2.key_id, v1_key_id);
    let mut c = p.client().await;
    for (enc, seed) in [(&old, [1u8; 32]), (&v2, [3u8; 32])] {
        let back = c
            .decrypt(decrypt_request(enc))
            .await
            .expect("Decrypt of an old and a not yet saved version")
            .into_inner()
            .plaintext;
        assert_eq!(back, seed);
    }

    // Read-only on top: still serving, still degraded, nothing written.
    fs.bind_read_only();
    p.wait_status("a save refused by the read-only state dir", |s| {
        s.healthz.contains("Read-only file system")
    })
    .await;
    let during_ro = round_trip(&p, &[4u8; 32]).await;
    assert_eq!(during_ro.key_id, v1_key_id);
    assert!(p.status().await.healthz.contains("key registry not saved"));
    assert_eq!(registry_active_version(&state), Some(1));

    // The disk comes back: the next probe saves and the promotion happens.
    fs.unbind();
    fs.unfill();
    p.wait_status("promotion to v2 once the disk is back", |s| {
        s.key_id == v2.key_id && s.healthz == "ok"
    })
    .await;
    assert_eq!(registry_active_version(&state), Some(2));
    assert_eq!(metric(&p, "openbao_kms_registry_unsaved").await, Some(0.0));
    let after = round_trip(&p, &[5u8; 32]).await;
    assert_eq!(after.key_id, v2.key_id);
    assert!(
        p.logs().contains("no longer degraded"),
        "recovery is logged"
    );
}

#[tokio::test]
async fn read_only_state_dir_at_start_serves_degraded_then_saves() {
    let bao = Bao::start().await;
    let fs = Tmpfs::mount();

    // With a registry: serves it, degraded, and takes the lock once writable.
    let state = fs.path.join("state");
    let mut o = ProviderOptions::new(&bao);
    o.state_dir = Some(state.clone());
    let mut p = Provider::start(&o).await;
    let key_id = p.status().await.key_id;
    assert_eq!(p.stop(), Some(0));
    fs.remount("ro");
    p.start_process();
    p.wait_status("degraded Status naming the state directory", |s| {
        s.key_id == key_id && s.healthz.contains("cannot be locked")
    })
    .await;
    round_trip(&p, &[6u8; 32]).await;
    fs.remount("rw");
    p.wait_healthy().await;
    assert_eq!(p.stop(), Some(0));

    // First start without a registry on a read-only directory: adopts in memory, serves.
    let fresh = fs.path.join("fresh");
    fs.remount("ro");
    let mut o = ProviderOptions::new(&bao);
    o.state_dir = Some(fresh.clone());
    let p = Provider::spawn(&o);
    p.wait_status("key adopted in memory", |s| {
        !s.key_id.is_empty() && s.healthz.contains("adopted in memory only")
    })
    .await;
    round_trip(&p, &[7u8; 32]).await;
    assert!(!fresh.exists(), "nothing written while read-only");
    fs.remount("rw");
    p.wait_healthy().await;
    assert_eq!(registry_active_version(&fresh), Some(1));
    assert!(
        fresh.join("key-registry.lock").exists(),
        "saved under the lock"
    );
}
