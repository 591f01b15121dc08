//! `doctor`: checks one host's configuration against the real OpenBao before kube-apiserver
//! depends on it. One line per check (`ok`, `warn`, `FAIL`, `skip`), non-zero exit on any FAIL.
//! Read-only apart from one encrypt+decrypt of random bytes and a fresh login.
mod checks;
mod credential;
mod isolation;
mod kube;
mod privilege;
mod profile;

use std::process::ExitCode;

use anyhow::Result;

use super::{DoctorArgs, Exit};
use crate::config::{self, Environment};

/// Every check in the order it runs; a check that cannot run is printed as `skip`.
pub(crate) const CHECKS: &[&str] = &[
    "config",
    "credential-expiry",
    "pkcs11-key",
    "tls",
    "openbao-health",
    "login",
    "token",
    "key-profile",
    "upsert",
    "mount",
    "round-trip",
    "least-privilege",
    "capabilities",
    "isolation",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// Prints each line as soon as its check finishes, so a slow check shows where it is.
#[derive(Default)]
struct Report {
    ok: usize,
    warn: usize,
    fail: usize,
    skip: usize,
    printed: Vec<&'static str>,
}

impl Report {
    fn line(&mut self, level: Level, check: &'static str, detail: impl std::fmt::Display) {
        let label = match level {
            Level::Ok => {
                self.ok += 1;
                "ok"
            }
            Level::Warn => {
                self.warn += 1;
                "warn"
            }
            Level::Fail => {
                self.fail += 1;
                "FAIL"
            }
            Level::Skip => {
                self.skip += 1;
                "skip"
            }
        };
        self.printed.push(check);
        // OpenBao error texts can span lines; a check stays on one line for grep and scripts.
        let detail = detail
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        println!("{label:<4} {check}: {detail}");
    }

    fn ok(&mut self, check: &'static str, detail: impl std::fmt::Display) {
        self.line(Level::Ok, check, detail);
    }

    fn warn(&mut self, check: &'static str, detail: impl std::fmt::Display) {
        self.line(Level::Warn, check, detail);
    }

    fn fail(&mut self, check: &'static str, detail: impl std::fmt::Display) {
        self.line(Level::Fail, check, detail);
    }

    /// Marks every check not yet printed as skipped because `cause` failed.
    fn skip_rest(&mut self, cause: &str) {
        for check in CHECKS {
            if !self.printed.contains(check) {
                self.line(
                    Level::Skip,
                    check,
                    format!("not run because {cause} failed"),
                );
            }
        }
    }

    fn finish(&self) -> ExitCode {
        let verdict = if self.fail == 0 { "OK" } else { "FAILED" };
        println!(
            "result: {verdict} ({} ok, {} warn, {} FAIL, {} skipped)",
            self.ok, self.warn, self.fail, self.skip
        );
        if self.fail == 0 {
            ExitCode::SUCCESS
        } else {
            Exit::Failed.into()
        }
    }
}

pub(crate) fn run(args: &DoctorArgs) -> Result<ExitCode> {
    let arg = &args.config;
    let mut r = Report::default();
    let settings = match config::load(&arg.config, &Environment::from_process()) {
        Ok(s) => s,
        Err(e) => {
            r.fail("config", e);
            r.skip_rest("config");
            if args.kube {
                for check in kube::KUBE_CHECKS {
                    r.line(Level::Skip, check, "not run because config failed");
                }
            }
            r.finish();
            return Ok(Exit::Config.into());
        }
    };
    let detail = format!(
        "{} is valid (OpenBao {}, auth {}, key {}/{})",
        arg.config.display(),
        settings.openbao.address,
        settings.auth.method_name(),
        settings.transit.mount_path,
        settings.transit.key_name
    );
    // What `serve` refuses fails here too; what it only warns about is a warning.
    let problems = crate::hardening::check_permissions(&settings, &arg.config);
    match problems
        .iter()
        .find(|p| p.refuses_serve())
        .or(problems.first())
    {
        Some(p) if p.refuses_serve() => r.fail("config", format!("{detail}; but {p}")),
        Some(p) => r.warn("config", format!("{detail}; but {p}")),
        None => r.ok("config", detail),
    }
    credential::check(&settings, &mut r);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        checks::run(&settings, &args.other_config, &mut r).await;
        if args.kube {
            let server = args.kube_server.as_deref();
            kube::run(&settings, &args.kubeconfig, server, &mut r).await;
        }
    });
    Ok(r.finish())
}
