#!/usr/bin/env bash
# Builds every cargo-fuzz target (fuzz/; nightly, else stable with RUSTC_BOOTSTRAP=1; cargo-fuzz from scripts/tools.sh)
# and runs each for SECONDS; a crash, leak or timeout fails the run and leaves the input in
# fuzz/artifacts/<target>/ (turn it into a regression test, docs/reliability.md "Fuzzing").
# Usage: scripts/fuzz.sh [SECONDS]   (make fuzz: 60 s per target; make test: a 10 s smoke run)
# FUZZ_BUILD_FLAGS: extra `cargo fuzz build/run` flags; the smoke run uses "--dev -s none"
# (an unoptimised build without AddressSanitizer compiles in about a third of the CPU time).
# FUZZ_KEEP_CORPUS=0 (the smoke run): replay fuzz/corpus and the seeds but write new inputs to a
# throwaway directory, so `make test` never grows fuzz/corpus (only `make fuzz` does).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
BUILD_DIR="${BUILD_DIR:-$root/build}"
export PATH="$BUILD_DIR/tools/bin:$PATH"
seconds="${1:-60}"
read -r -a flags <<<"${FUZZ_BUILD_FLAGS:-}"

cd "$root"
# cargo-fuzz needs unstable compiler flags. Without a nightly toolchain the stable one is told to
# accept them (RUSTC_BOOTSTRAP=1): every target still builds and runs, never skipped.
toolchain=(+nightly)
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain; building on $(cargo --version) with RUSTC_BOOTSTRAP=1" >&2
  toolchain=()
  export RUSTC_BOOTSTRAP=1
fi
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is missing: run scripts/tools.sh" >&2; exit 1; }

started=$(date +%s)
cargo "${toolchain[@]}" fuzz build "${flags[@]}"
echo "fuzz: built every target in $(( $(date +%s) - started ))s"

summary=()
for target in $(cargo "${toolchain[@]}" fuzz list); do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus" "fuzz/seeds/$target"
  dirs=("$corpus" "fuzz/seeds/$target")
  scratch=""
  if [[ "${FUZZ_KEEP_CORPUS:-1}" == 0 ]]; then
    # libFuzzer writes new inputs into the first directory it is given.
    scratch="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-$target.XXXXXX")"
    dirs=("$scratch" "${dirs[@]}")
  fi
  log="fuzz/target/$target.log"
  # -rss_limit_mb: the parsers handle at most a few hundred KiB; a blow-up is a finding too.
  status=0
  cargo "${toolchain[@]}" fuzz run "${flags[@]}" "$target" "${dirs[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  [[ -z "$scratch" ]] || rm -rf "$scratch"
  if [[ $status -ne 0 ]]; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  summary+=("$target: ${execs:-?} executions in ${seconds}s (${rate:-?}/s), corpus $(find "$corpus" -type f | wc -l) files")
done
printf 'fuzz: %s\n' "${summary[@]}"
echo "fuzz: no crash; total $(( $(date +%s) - started ))s"
