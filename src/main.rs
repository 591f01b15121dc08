//! The `bao-kms-provider` binary: everything lives in the library; see `cli::run`.
/// Freed memory is wiped, so library buffers that held secrets leave no copy (docs/security.md).
#[global_allocator]
static ALLOCATOR: bao_kms_provider::hardening::WipingAllocator =
    bao_kms_provider::hardening::WipingAllocator;

fn main() -> std::process::ExitCode {
    bao_kms_provider::cli::run()
}
