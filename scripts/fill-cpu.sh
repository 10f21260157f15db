#!/usr/bin/env bash
# Fill CPU vs hit CPU (issue 15 point 2): starts chacha (2 workers, an empty cache dir),
# pulls one large object through it cold (a fill) and then HITS times warm, and prints
# chacha's CPU time (utime + stime of the whole process, io-wq workers included, from
# /proc/PID/stat) and throughput for each, and the fill/hit ratio (fill over the best hit).
# It syncs first, so that no other dirty pages are being written back during the fill.
#
#   scripts/fill-cpu.sh URL [HITS]        e.g. scripts/fill-cpu.sh http://127.0.0.1:9000/blob/1g
#
# The origin must serve URL with a validator (ETag or Last-Modified: nginx serving a
# static file does). CHACHA_BIN picks the binary (default target/release/chacha, built
# if missing); CHACHA_ENV adds environment (e.g. RUST_LOG=debug). Needs curl. On a busy
# machine CPU times vary run to run: repeat and compare like with like.
set -euo pipefail
url=${1:?usage: scripts/fill-cpu.sh URL [HITS]}
hits=${2:-2}
cd "$(dirname "$0")/.."
bin=${CHACHA_BIN:-target/release/chacha}
[[ -x $bin ]] || cargo build --release -q
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/c.yaml" <<Y
addr: 127.0.0.1:0
workers: 2
disk:
  dir: $dir/cache
  limit: 100GB
rules:
  - pattern: '.*'
access:
  destinations:
    allow: [127.0.0.0/8]
Y
env ${CHACHA_ENV:-} RUST_LOG=${RUST_LOG:-warn,chacha::server=info} "$bin" run -f "$dir/c.yaml" > "$dir/log" 2>&1 &
pid=$!
for _ in $(seq 200); do grep -q "listening on" "$dir/log" && break; sleep 0.05; done
port=$(grep -o "listening on [0-9.:]*" "$dir/log" | head -1 | sed 's/.*://')
[[ -n $port ]] || { cat "$dir/log"; exit 1; }
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
best_hit=
one() {
    local t0 t1 speed
    t0=$(cpu)
    speed=$(curl -sS -o /dev/null -w '%{speed_download}' -x "http://127.0.0.1:$port" "$url")
    t1=$(cpu)
    awk -v w="$1" -v t="$((t1 - t0))" -v hz="$hz" -v s="$speed" \
        'BEGIN { printf "%-5s %6.2f CPU-s %8.0f MiB/s\n", w, t / hz, s / 1048576 }'
    last=$((t1 - t0))
}
# Dirty pages left by earlier runs (a fill writes 1 GiB that stays dirty for ~30 s) make
# this fill wait for writeback and roughly double its CPU: start from none.
sync
one fill
fill=$last
for _ in $(seq "$hits"); do
    one hit
    if [[ -z $best_hit || $last -lt $best_hit ]]; then best_hit=$last; fi
done
awk -v f="$fill" -v h="$best_hit" 'BEGIN { if (h > 0) printf "fill/hit CPU ratio %.2f\n", f / h }'
