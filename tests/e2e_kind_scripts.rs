//! The kind end-to-end scripts need a Docker engine and kind, which this machine lacks, so
//! `make test` proves what it can: they are shellcheck-clean, and without Docker or kind they
//! refuse up front with one clear message and exit code 2, changing nothing.
use std::path::PathBuf;
use std::process::Command;

fn kind_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/kind")
}

#[test]
fn kind_scripts_are_shellcheck_clean() {
    let dir = kind_dir();
    let out = Command::new("shellcheck")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("-x")
        .args(["up.sh", "down.sh", "common.sh"].map(|f| dir.join(f)))
        .output()
        .expect("shellcheck is missing — run `make tools` (Debian package shellcheck)");
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a script with `env`; returns (exit code, stderr).
fn run(script: &str, build_dir: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(kind_dir().join(script))
        .env("BUILD_DIR", build_dir)
        .envs(env.iter().copied())
        .output()
        .expect("run script");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_docker_or_kind_the_scripts_refuse_clearly_with_exit_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let build = tmp.path().join("build");
    // No docker CLI at all.
    let no_cli = [
        ("DOCKER", "/nonexistent/docker"),
        ("KIND", "/nonexistent/kind"),
    ];
    for script in ["up.sh", "down.sh"] {
        let (code, err) = run(script, &build, &no_cli);
        assert_eq!(code, Some(2), "{script}: exit 2 when it cannot run:\n{err}");
        assert!(
            err.contains("cannot run the kind end-to-end test on this machine"),
            "{script}:\n{err}"
        );
        assert!(err.contains("docker is not installed"), "{script}:\n{err}");
        assert!(err.contains("kind is not installed"), "{script}:\n{err}");
        assert!(err.contains("nothing was changed"), "{script}:\n{err}");
    }
    // A docker CLI whose engine is not running (this machine's case), with kind present.
    let fake = |name: &str, body: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("fake tool");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        p.to_string_lossy().into_owned()
    };
    let docker = fake(
        "docker",
        "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?' >&2; exit 1",
    );
    let kind = fake("kind", "exit 0");
    for script in ["up.sh", "down.sh"] {
        let (code, err) = run(script, &build, &[("DOCKER", &docker), ("KIND", &kind)]);
        assert_eq!(
            code,
            Some(2),
            "{script}: exit 2 without a Docker engine:\n{err}"
        );
        assert!(
            err.contains(
                "the Docker engine is not reachable: `docker info` failed: Cannot connect"
            ),
            "{script}:\n{err}"
        );
        assert!(
            !err.contains("kind is not installed"),
            "{script}: kind was found:\n{err}"
        );
    }
    assert!(
        !build.exists(),
        "a refused run must not create its work directory"
    );
}
