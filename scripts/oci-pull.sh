#!/usr/bin/env bash
# Thin wrapper over chacha-pull (pull/, issue 13): builds it in release mode and runs it
# with the given arguments, e.g.
#
#   scripts/oci-pull.sh --proxy http://chacha:8080 --runners 8 \
#       ghcr.io/cirruslabs/macos-sequoia-base:latest
#
# See README "Load testing a deployment". The self-contained benchmark that starts its own
# registry and chacha is `cargo bench --bench oci_pull` (header of benches/oci_pull.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p chacha-pull
exec target/release/chacha-pull "$@"
