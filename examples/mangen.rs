//! Writes the man pages, generated from the same clap definitions as `--help`, so they never
//! drift: `bao-kms-provider.8` plus one `bao-kms-provider-<subcommand>.8` page per subcommand,
//! and `bao-kms-provider.toml.5` from docs/configuration.md (`config_page`).
//! Used by `make deb` / `make rpm`: `cargo run --release --example mangen -- OUT_DIR [DATE]`.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bao_kms_provider::cli::{Cli, Exit};
use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

#[path = "mangen/config_page.rs"]
mod config_page;

const SECTION: &str = "8";
const MANUAL: &str = "System Administration";

/// FILES and SEE ALSO for the main page: what the packages install and where state lives.
fn extra_sections(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    for (path, what) in [
        ("/etc/openbao-kms/config.toml", "Configuration (TOML), described in bao-kms-provider.toml(5). The packaged default is commented out and not valid on its own; see the example below."),
        ("/usr/share/doc/bao-kms-provider/examples/config.toml", "Every setting with its default and an explanation."),
        ("/run/openbao-kms/kms.sock", "KMS v2 socket for kube-apiserver, held by bao-kms-provider.socket."),
        ("/var/lib/openbao-kms", "Key registry (state_dir). Part of the storage contract: the packages never remove it unless BAO_KMS_PURGE_STATE=yes is set for the purge (docs/packaging.md)."),
    ] {
        roff.control("TP", []);
        roff.text([italic(path)]);
        roff.text([roman(what)]);
    }
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(format!(
        "{}. 64 names the file and field to fix; on 65 restarting does not help, an operator \
         must restore the key registry in state_dir (systemd does not restart the service on 64 \
         or 65). verify-etcd-value and scan-etcd have their own codes, listed in \
         bao-kms-provider-verify-etcd-value(8) and bao-kms-provider-scan-etcd(8).",
        Exit::summary()
    ))]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("bao-kms-provider.toml"),
        roman("(5), "),
        bold("systemctl"),
        roman("(1), "),
        bold("systemd.socket"),
        roman("(5), "),
        bold("sysusers.d"),
        roman("(5), "),
        bold("tmpfiles.d"),
        roman("(5)"),
    ]);
}

fn write_page(man: &Man, dir: &Path, extra: bool) -> std::io::Result<PathBuf> {
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    man.render(&mut out)?;
    if extra {
        let mut roff = Roff::default();
        extra_sections(&mut roff);
        roff.to_writer(&mut out)?;
    }
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&out)?;
    Ok(path)
}

fn write_config_page(dir: &Path, date: &str) -> std::io::Result<()> {
    let path = dir.join(config_page::FILE_NAME);
    let mut f = std::fs::File::create(&path)?;
    config_page::render(date).to_writer(&mut f)?;
    println!("{}", path.display());
    Ok(())
}

fn generate(cmd: &clap::Command, dir: &Path, date: &str, top: bool) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        generate(sub, dir, date, false)?;
    }
    let man = Man::new(cmd.clone())
        .section(SECTION)
        .manual(MANUAL)
        .date(date);
    let path = write_page(&man, dir, top)?;
    println!("{}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: mangen OUT_DIR [DATE]");
        return ExitCode::from(2);
    };
    let date = args
        .next()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let result = std::fs::create_dir_all(&dir)
        .and_then(|()| generate(&cmd, &dir, &date, true))
        .and_then(|()| write_config_page(&dir, &date));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mangen: writing man pages to {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
