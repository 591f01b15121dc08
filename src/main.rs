//! The `bao-kms-provider` binary: everything lives in the library; see `cli::run`.
fn main() -> std::process::ExitCode {
    bao_kms_provider::cli::run()
}
