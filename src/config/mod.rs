//! Configuration: the TOML contract (`raw`), its checks (`validate`), the typed result
//! (`settings`) and what a reload does with each changed setting (`reload`).
mod error;
mod raw;
mod reload;
mod settings;
mod validate;

use std::path::Path;

pub use error::ConfigError;
pub use raw::RawConfig;
pub(crate) use raw::*;
pub(crate) use reload::reloaded;
pub(crate) use reload::{OnReload, ReloadDiff};
pub use settings::Settings;
pub(crate) use settings::*;
pub use validate::{upgrade_checks, validate, Environment};

/// Parse TOML text; `path` is only used to name the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// Read, parse and validate a config file.
pub(crate) fn load(path: &Path, env: &Environment) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    validate(&parse(&text, path)?, env)
}

/// The effective config as TOML, for `check-config`. It holds paths, never secret values.
pub fn render_effective(raw: &RawConfig) -> String {
    toml::to_string_pretty(raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
