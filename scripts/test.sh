#!/usr/bin/env bash
# The whole test suite, as README.md shows it and .ci/run calls it.
# Installs the real tools the tests use (curl, openssl, ssh-agent, age, strace, haproxy, Schemathesis, cargo-fuzz)
# when they are missing, then runs every fuzz target for a few seconds (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v ssh-agent >/dev/null 2>&1 || need+=(openssh-client)
command -v age >/dev/null 2>&1 || need+=(age)
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (used as real clients by the tests)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${need[@]}"; fi
fi

# Schemathesis (HTTP fuzzing against the OpenAPI document, tests/schemathesis.rs), from PyPI.
venv=target/schemathesis-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi

# The big-file tests write a 1 GiB file three times (source, stored, downloaded) and a 256 MiB
# archive round trip into the temporary directory: say so up front rather than fail on ENOSPC.
tmp="${TMPDIR:-/tmp}"
free_kib=$(df -Pk "$tmp" | awk 'NR == 2 { print $4 }')
if [ -n "$free_kib" ] && [ "$free_kib" -lt $((6 * 1024 * 1024)) ]; then
  echo "warning: $tmp has $((free_kib / 1024)) MiB free; the big-file tests need about 6 GiB" >&2
fi

# The client's end-to-end tests run the server's binaries: build every binary first.
cargo build --workspace --bins
cargo test --workspace --all-targets "$@"
# Doc tests (--all-targets does not run them).
cargo test --workspace --doc
# The benchmark report's arithmetic (medians over rounds, ratios, targets): Python's stdlib.
python3 -m unittest discover -s bench -p 'test_*.py'

# Every fuzz target for a bounded time (10 s each; longer by hand: CONTRIBUTING.md).
./scripts/fuzz.sh "${EFS_FUZZ_SECONDS:-10}"
