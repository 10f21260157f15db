#!/usr/bin/env bash
# OCI-pull load test (issue 6): builds chacha and benches/oci_pull.rs in release mode and
# runs it. Options go to the bench (see the header of benches/oci_pull.rs), e.g.
#
#   scripts/oci-pull.sh                                   # 8 x 64 MiB layers, 1 and 8 pulls
#   scripts/oci-pull.sh --layers 4 --layer-mib 16 --pulls 1,4
#   OCI_LAYER_MIB=512 scripts/oci-pull.sh --origin-cut-every 5
#
# Everything runs on 127.0.0.1; the cache dir lives under $TMPDIR (default /tmp) and is
# removed at the end. Exit status: 0 when every blob verified, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin chacha
cargo bench --bench oci_pull --no-run
CHACHA_BIN="${CHACHA_BIN:-$PWD/target/release/chacha}" \
  exec cargo bench --bench oci_pull -- "$@"
