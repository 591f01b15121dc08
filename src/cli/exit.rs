//! The process exit codes and the one mapping from an error to its code. systemd's
//! `RestartPreventExitStatus=64 65` and scripts decide on these numbers, so each one means a
//! single thing: whether restarting can help.
use std::process::ExitCode;

use crate::config::ConfigError;
use crate::hardening::UntrustedFiles;
use crate::keys::StoreError;
use crate::openbao;

use super::stage::StageError;

/// What the process tells systemd and scripts on exit (`verify-etcd-value` has its own codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok,
    /// A check ran and failed, or a failure a restart may fix (OpenBao away, a lock held).
    Failed,
    /// The command line itself is wrong (clap exits with it before any subcommand runs).
    Usage,
    /// The configuration, a file it names or a PKCS#11 token setting is wrong (EX_USAGE): an
    /// operator must act; a restart loop would only spend the token's PIN retries.
    Config,
    /// The key registry is damaged, rolled back or missing (EX_DATAERR): an operator must
    /// restore it.
    State,
}

impl Exit {
    pub const ALL: [Exit; 5] = [
        Self::Ok,
        Self::Failed,
        Self::Usage,
        Self::Config,
        Self::State,
    ];

    pub const fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Failed => 1,
            Self::Usage => 2,
            Self::Config => 64,
            Self::State => 65,
        }
    }

    /// A few words for the README, `--help` and the man page.
    pub const fn meaning(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "check failed",
            Self::Usage => "usage error",
            Self::Config => "configuration error",
            Self::State => "key registry needs an operator",
        }
    }

    /// Every code with its meaning: `0 ok, 1 check failed, ...`.
    pub fn summary() -> String {
        Self::ALL
            .iter()
            .map(|e| format!("{} {}", e.code(), e.meaning()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The code for an error a subcommand returned: the error itself or a context around it
    /// decides; anything not named here may fix itself.
    pub(crate) fn of(e: &anyhow::Error) -> Self {
        let pkcs11_needs_operator = matches!(
            e.downcast_ref::<openbao::Error>(),
            Some(openbao::Error::Pkcs11(p)) if p.needs_operator()
        );
        if e.downcast_ref::<ConfigError>().is_some()
            || e.downcast_ref::<UntrustedFiles>().is_some()
            || e.downcast_ref::<StageError>().is_some()
            || pkcs11_needs_operator
        {
            Self::Config
        } else if e
            .downcast_ref::<StoreError>()
            .is_some_and(StoreError::needs_operator)
        {
            Self::State
        } else {
            Self::Failed
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The README states the codes in one sentence; the man page is generated from `summary`.
    #[test]
    fn the_readme_lists_every_exit_code() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let expected = format!("Exit codes: {}", Exit::summary());
        assert!(
            words(&readme).contains(&expected),
            "README.md lacks {expected:?}"
        );
    }

    #[test]
    fn errors_map_to_their_codes() {
        let config: anyhow::Error = ConfigError::invalid("server.state_dir", "is relative").into();
        assert_eq!(Exit::of(&config.context("loading")), Exit::Config);
        let damaged: anyhow::Error = StoreError::ScopeMismatch {
            path: "/s/r".into(),
        }
        .into();
        assert_eq!(Exit::of(&damaged), Exit::State);
        assert_eq!(Exit::of(&anyhow::anyhow!("OpenBao away")), Exit::Failed);
    }
}
