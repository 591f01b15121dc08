//! Logging setup: native journald fields when running under systemd's journal, else text or JSON
//! on stderr. Field names like `kms_method` become journald's `KMS_METHOD`.
use std::os::unix::fs::MetadataExt;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, LogLevel};

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    }
}

/// True when stderr is connected to the journal (systemd sets `JOURNAL_STREAM=dev:inode`).
pub(crate) fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().is_ok_and(|d| d == meta.dev())
        && ino.parse::<u64>().is_ok_and(|i| i == meta.ino())
}

/// Levels map to the syslog priorities operators filter on (`journalctl -p info` hides debug),
/// not tracing-journald's default that shifts info to notice and debug to info.
fn priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level for debugging.
pub(crate) fn init(level: LogLevel, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},h2=warn,hyper=warn,tower=warn,reqwest=warn,rustls=warn",
            level_name(level)
        ))
    });
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        // No field prefix: `kms_method` is indexed as KMS_METHOD (not F_KMS_METHOD), so
        // `journalctl KMS_METHOD=Encrypt` works. No field of ours is named like a journald
        // standard field (PRIORITY, MESSAGE_ID, ...), and names starting with `_` are refused.
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => registry
                .with(
                    layer
                        .with_field_prefix(None)
                        .with_priority_mappings(priorities())
                        .with_syslog_identifier("bao-kms-provider".into()),
                )
                .try_init(),
            Err(e) => {
                let r = registry
                    .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
                    .try_init();
                tracing::warn!(error = %e, "journald is not reachable; logging to stderr instead");
                r
            }
        },
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        _ => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
