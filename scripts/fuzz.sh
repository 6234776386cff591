#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, seeded from the committed corpus
# (fuzz/corpus/<target>/, read only: what a run finds goes to target/fuzz-corpus/<target>/).
#
#   scripts/fuzz.sh            # 10 s per target (what scripts/test.sh and CI run)
#   scripts/fuzz.sh 600        # 10 minutes per target, by hand
#   scripts/fuzz.sh 60 login   # one target
#
# A crash stops the script with a non-zero exit; libFuzzer leaves the input in
# fuzz/artifacts/<target>/ (see CONTRIBUTING.md, "Fuzzing", for turning it into a test).
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-10}"
shift || true

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --locked --quiet
fi

export RUSTC_BOOTSTRAP=1
cd fuzz
# One build of all targets into one target dir (fuzz/target), with AddressSanitizer (cargo-fuzz's
# default: EFS forbids unsafe code, its dependencies do not). The build time is the step's cost:
# fuzz/Cargo.toml builds at opt-level 1, and 16 codegen units keep it in budget.
start=$(date +%s)
cargo fuzz build --codegen-units 16
echo "fuzz build: $(( $(date +%s) - start )) s"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
summary=()
for t in "${targets[@]}"; do
  found="../target/fuzz-corpus/$t"
  mkdir -p "$found"
  log="../target/fuzz-corpus/$t.log"
  # -rss_limit_mb: the content target holds whole contents; -max_len: one segment and a bit;
  # -malloc_limit_mb: no input of at most 70,000 bytes justifies one allocation of 256 MiB (a
  # length field believed before the bytes it announces were read).
  if ! cargo fuzz run --codegen-units 16 "$t" "$found" "corpus/$t" -- \
      -max_total_time="$secs" -max_len=70000 -rss_limit_mb=4096 -malloc_limit_mb=256 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo '?')
  summary+=("$(printf '%-16s %10s executions in %s s, coverage %s edges' "$t" "$runs" "$secs" "$cov")")
done
echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
echo "fuzz: $(( $(date +%s) - start )) s in all"
