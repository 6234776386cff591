#!/usr/bin/env bash
# The whole test suite, as README.md shows it and .ci/run calls it.
# Installs the real tools the tests use (curl, openssl, ssh-agent, age) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v ssh-agent >/dev/null 2>&1 || need+=(openssh-client)
command -v age >/dev/null 2>&1 || need+=(age)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (used as real clients by the tests)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${need[@]}"; fi
fi

# The client's end-to-end tests run the server's binaries: build every binary first.
cargo build --workspace --bins
cargo test --workspace --all-targets "$@"
# Doc tests (--all-targets does not run them).
cargo test --workspace --doc
