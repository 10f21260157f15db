#!/usr/bin/env bash
# Fleet simulation (issue 14, scale-out): an origin host, N chacha hosts and M runner hosts,
# each in its own network namespace with its own address and link, joined by veth pairs on a
# Linux bridge; runners pull a Tart-like image with chacha-pull, each through one chacha host.
# See the README's "Fleet simulation" for what it builds and how to read the table.
#
#   sudo scripts/fleet-sim.sh            # the full run: N = 1 2 4, M = 8, with/without
#                                        # direct-connect, and a kill-mid-pull run
#   sudo scripts/fleet-sim.sh cleanup    # only remove what an aborted run left behind
#
# Root and iproute2 (`ip netns`, veth, bridge, `tc ... tbf`) are required; python3 runs the
# origin (scripts/fleet-origin.py). Addresses come only from 198.18.0.0/15 (RFC 2544's
# benchmarking range) and live only inside the namespaces: the bridge itself sits in a
# "switch" namespace, so the default namespace gets no interface, address or route.
#
# Knobs (environment):
#   FLEET_PREFIX     name prefix of every namespace (default fsim); leftovers with this
#                    prefix are removed at start, everything is removed at exit
#   NODES            chacha host counts to run, e.g. "1 2 4" (default)
#   RUNNERS          runner hosts M (default 8)
#   LAYERS LAYER_MIB the image: a config blob + LAYERS layers of LAYER_MIB MiB (8 x 32)
#   DIRECT_CONNECT   "off on" (default): runs each N with the rules' direct-connect off/on
#   DIRECT_RUN       1: first one run at the first N whose runners pull straight from the
#                    origin (chacha hosts up but bypassed; same links): the baseline a cold
#                    pull through chacha is compared with (default 0)
#   KILL_RUN         1 (default): one more run at N = KILL_N (default 2) where chacha host 0
#                    is killed (SIGKILL) once the origin has sent KILL_AT (default 0.5) of
#                    the image; runners then go only through the other hosts, so any failed
#                    pull is the cluster's doing
#   CHACHA_RATE      each chacha host's link, both directions (default 800mbit)
#   ORIGIN_RATE      the origin's uplink, the WAN (default 400mbit)
#   RUNNER_RATE      each runner's link, both directions (default: unlimited)
#   TBF_BURST        tbf burst (default 512kb)
#   ORIGIN_CUT_AT    the storage cuts the first full response of every blob after this many
#                    bytes (default: off; e.g. 1000000 exercises Range resume)
#   CUT_EVERY        chacha-pull --cut-every (default: off; client-side cuts + Range resume)
#   CHACHA_WORKERS   workers per chacha (default 1)
#   PULL_TIMEOUT     seconds one run's pulls may take (default 300)
#   CHACHA_BIN PULL_BIN   the binaries (default target/release/{chacha,chacha-pull})
#   OUT              where results go (default: a new dir under /tmp); results.jsonl (one
#                    JSON object per run), table.md, and per run run-n<N>-dc-<on|off>[-kill]/
#                    with the chacha logs and configs, the origin's stats and each runner's
#                    chacha-pull output and JSON summary
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${FLEET_PREFIX:-fsim}
NODES=${NODES:-"1 2 4"}
RUNNERS=${RUNNERS:-8}
LAYERS=${LAYERS:-8}
LAYER_MIB=${LAYER_MIB:-32}
DIRECT_CONNECT=${DIRECT_CONNECT:-"off on"}
KILL_RUN=${KILL_RUN:-1}
DIRECT_RUN=${DIRECT_RUN:-0}
KILL_N=${KILL_N:-2}
KILL_AT=${KILL_AT:-0.5}
CHACHA_RATE=${CHACHA_RATE:-800mbit}
ORIGIN_RATE=${ORIGIN_RATE:-400mbit}
RUNNER_RATE=${RUNNER_RATE:-}
TBF_BURST=${TBF_BURST:-512kb}
ORIGIN_CUT_AT=${ORIGIN_CUT_AT:-}
CUT_EVERY=${CUT_EVERY:-}
CHACHA_WORKERS=${CHACHA_WORKERS:-1}
PULL_TIMEOUT=${PULL_TIMEOUT:-300}
CHACHA_BIN=${CHACHA_BIN:-$ROOT/target/release/chacha}
PULL_BIN=${PULL_BIN:-$ROOT/target/release/chacha-pull}
STEP=20 # seconds any setup step or readiness wait may take

SW=$P-sw
ORIGIN_NS=$P-origin
ORIGIN_IP=198.18.0.2
REG_PORT=5000
STO_PORT=5001
NET=198.18.0.0/15

log() { echo "fleet-sim: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Every namespace this prefix owns (ours, from this or an aborted earlier run).
our_netns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${P}-" || true; }

cleanup() {
  local ns pid
  for ns in $(our_netns); do
    # Processes started in our namespaces (chacha, origin, pulls): by id.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for ns in $(our_netns); do
    # Deleting a namespace destroys the veths and the bridge inside it.
    timeout $STEP ip netns del "$ns" 2>/dev/null || true
  done
  [ -z "$(our_netns)" ] || log "WARNING: namespaces left: $(our_netns | tr '\n' ' ')"
}

if [ "${1:-}" = cleanup ]; then cleanup; exit 0; fi
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
command -v ip >/dev/null || die "needs iproute2 (ip)"
command -v tc >/dev/null || die "needs iproute2 (tc)"
command -v python3 >/dev/null || die "needs python3 (the origin)"
[ -x "$CHACHA_BIN" ] || die "no $CHACHA_BIN (cargo build --release)"
[ -x "$PULL_BIN" ] || die "no $PULL_BIN (cargo build --release -p chacha-pull)"
for n in $NODES $KILL_N; do [ "$n" -ge 1 ] && [ "$n" -le 80 ] || die "NODES: 1..80"; done
[ "$RUNNERS" -ge 1 ] && [ "$RUNNERS" -le 150 ] || die "RUNNERS: 1..150"

WORK=$(mktemp -d /tmp/$P-work.XXXXXX)
OUT=${OUT:-$(mktemp -d /tmp/$P-out.XXXXXX)}
mkdir -p "$OUT"
: >"$OUT/results.jsonl"
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
cleanup

chacha_ip() { echo "198.18.0.$((10 + $1))"; }
runner_ip() { echo "198.18.0.$((100 + $1))"; }

# A host: namespace NS with eth0 (ADDR/24) on the switch's bridge; RATE shapes both
# directions (tbf on eth0 egress = its upload, on the switch port's egress = its download).
add_host() {
  local ns=$1 addr=$2 up=$3 down=$4 port=v-${1#"$P"-}
  port=${port:0:15}
  timeout $STEP ip netns add "$ns"
  timeout $STEP ip link add name eth0 netns "$ns" type veth peer name "$port" netns "$SW"
  timeout $STEP ip -n "$SW" link set "$port" master br0 up
  timeout $STEP ip -n "$ns" addr add "$addr/24" dev eth0
  timeout $STEP ip -n "$ns" link set lo up
  timeout $STEP ip -n "$ns" link set eth0 up
  [ -z "$up" ] || timeout $STEP ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$up" burst "$TBF_BURST" latency 50ms
  [ -z "$down" ] || timeout $STEP ip netns exec "$SW" tc qdisc add dev "$port" root tbf rate "$down" burst "$TBF_BURST" latency 50ms
}

build_network() {
  local n=$1 i
  timeout $STEP ip netns add "$SW"
  timeout $STEP ip -n "$SW" link add br0 type bridge
  timeout $STEP ip -n "$SW" link set br0 up
  # The origin's uplink is the WAN; what it receives (requests) is not shaped.
  add_host "$ORIGIN_NS" "$ORIGIN_IP" "$ORIGIN_RATE" ""
  for ((i = 0; i < n; i++)); do add_host "$P-c$i" "$(chacha_ip $i)" "$CHACHA_RATE" "$CHACHA_RATE"; done
  for ((i = 0; i < RUNNERS; i++)); do add_host "$P-r$i" "$(runner_ip $i)" "$RUNNER_RATE" "$RUNNER_RATE"; done
}

# Polls a URL from inside a namespace until it answers (bounded).
wait_http() {
  local ns=$1 url=$2 deadline=$((SECONDS + STEP))
  until ip netns exec "$ns" curl -s -o /dev/null --max-time 1 "$url"; do
    [ $SECONDS -lt $deadline ] || die "$url did not answer within ${STEP}s (ns $ns)"
    sleep 0.1
  done
}

ns_counter() { ip netns exec "$1" cat "/sys/class/net/eth0/statistics/$2"; }
proc_cpu() { # utime + stime of a pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}
cpu_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }

write_config() { # node-index n direct-connect(on/off) file
  local i=$1 n=$2 dc=$3 f=$4 j rx_reg rx_sto
  rx_reg="${ORIGIN_IP//./\\.}:$REG_PORT"
  rx_sto="${ORIGIN_IP//./\\.}:$STO_PORT"
  {
    echo "addr: $(chacha_ip "$i"):8080"
    echo "workers: $CHACHA_WORKERS"
    echo "disk:"
    echo "  dir: $WORK/run/c$i"
    echo "  limit: $((2 * IMAGE_BYTES))"
    echo "access:"
    echo "  # 198.18.0.0/15 is not in the default (private) client list."
    echo "  clients: [$NET]"
    echo "  destinations:"
    echo "    allow: [$NET]"
    echo "rules:"
    echo "  - pattern: '^http://$rx_reg/v2/.*/blobs/'"
    echo "    ignore-authorization-header: true"
    echo "  - pattern: '^http://$rx_sto/'"
    if [ "$dc" = on ]; then
      echo "    direct-connect: true"
      echo "    direct-connect-header: true"
    fi
    echo "    ignore-parameters: [X-Amz-Algorithm, X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders, X-Amz-Signature]"
    if [ "$n" -gt 1 ]; then
      echo "cluster:"
      echo "  secret: fleet-sim-secret-$$"
      echo "  nodes:"
      for ((j = 0; j < n; j++)); do echo "    - addr: $(chacha_ip $j):8080"; done
    fi
  } >"$f"
}

# One run: N chacha hosts, RUNNERS runners, direct-connect on/off, kill (0/1), and
# whether the runners bypass chacha (direct: 1).
run_one() {
  local n=$1 dc=$2 kill=$3 direct=${4:-} i pid dir=$WORK/run label
  label="N=$n dc=$dc${kill:+ kill=$kill}${direct:+ direct}"
  log "run: $label"
  cleanup
  rm -rf "$dir"
  mkdir -p "$dir/home"
  build_network "$n"

  # The origin (fresh counters every run).
  ip netns exec "$ORIGIN_NS" python3 "$ROOT/scripts/fleet-origin.py" --dir "$WORK/image" \
    --host "$ORIGIN_IP" --registry-port $REG_PORT --storage-port $STO_PORT \
    --layers "$LAYERS" --layer-mib "$LAYER_MIB" ${ORIGIN_CUT_AT:+--cut-first-at "$ORIGIN_CUT_AT"} \
    >"$dir/origin.log" 2>&1 &
  disown # (cleanup ends it by id; no "Killed" job notices)
  wait_http "$ORIGIN_NS" "http://$ORIGIN_IP:$STO_PORT/stats"

  local -a cpids=()
  for ((i = 0; i < n; i++)); do
    mkdir -p "$dir/c$i"
    write_config "$i" "$n" "$dc" "$dir/c$i.yaml"
    timeout $STEP "$CHACHA_BIN" check -f "$dir/c$i.yaml" >"$dir/c$i.check" 2>&1 ||
      { cat "$dir/c$i.check" >&2; die "chacha check rejected $dir/c$i.yaml"; }
    ip netns exec "$P-c$i" env RUST_LOG=${RUST_LOG:-warn} "$CHACHA_BIN" run -f "$dir/c$i.yaml" >"$dir/c$i.log" 2>&1 &
    cpids+=($!)
    disown
  done
  for ((i = 0; i < n; i++)); do wait_http "$P-c$i" "http://$(chacha_ip $i):8080/health"; done

  # A direct-connect 307 points at a chacha host: runners reach those directly.
  local nop=""
  for ((i = 0; i < n; i++)); do nop+="${nop:+,}$(chacha_ip $i):8080"; done
  # A direct run reaches the origin (registry and storage) without the proxy.
  if [ -n "$direct" ]; then nop+=",$ORIGIN_IP"; fi
  local -a tx0=() rpids=()
  for ((i = 0; i < n; i++)); do tx0+=("$(ns_counter "$P-c$i" tx_bytes)"); done
  local busy0 t0 node first=0 span=$n
  busy0=$(cpu_busy)
  if [ -n "$kill" ]; then first=1 span=$((n - 1)); fi
  t0=$(date +%s.%N)
  for ((i = 0; i < RUNNERS; i++)); do
    node=$((first + i % span))
    ip netns exec "$P-r$i" env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy \
      HOME="$dir/home" timeout "$PULL_TIMEOUT" "$PULL_BIN" --proxy "http://$(chacha_ip $node):8080" \
      --runners 1 --no-proxy "$nop" ${CUT_EVERY:+--cut-every "$CUT_EVERY"} --json "$dir/r$i.json" \
      "http://$ORIGIN_IP:$REG_PORT/fleet/vm:latest" >"$dir/r$i.out" 2>&1 &
    rpids+=($!)
  done

  local killed_at=""
  if [ -n "$kill" ]; then
    # Kill chacha host 0 once the origin has sent KILL_AT of the image: mid-fill, while the
    # other hosts' runners stream the blobs it owns.
    local want deadline=$((SECONDS + PULL_TIMEOUT)) sent
    want=$(python3 -c "print(int($KILL_AT * $IMAGE_BYTES))")
    while :; do
      sent=$(ip netns exec "$ORIGIN_NS" curl -s --max-time 2 "http://$ORIGIN_IP:$STO_PORT/stats" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["storage_body_bytes"])' 2>/dev/null || echo 0)
      [ "$sent" -ge "$want" ] && break
      [ $SECONDS -lt $deadline ] || die "the origin never sent $want bytes"
      sleep 0.05
    done
    kill -9 "${cpids[0]}"
    killed_at=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
    log "killed chacha host 0 at ${killed_at}s (origin had sent $sent bytes)"
  fi

  local -a ends=() codes=()
  for pid in "${rpids[@]}"; do
    local rc=0
    wait "$pid" || rc=$?
    codes+=("$rc")
  done
  local t1 busy1
  t1=$(date +%s.%N)
  busy1=$(cpu_busy)
  local -a tx1=() cpu=()
  for ((i = 0; i < n; i++)); do
    tx1+=("$(ns_counter "$P-c$i" tx_bytes)")
    cpu+=("$(proc_cpu "${cpids[$i]}")")
  done
  ip netns exec "$ORIGIN_NS" curl -s --max-time 5 "http://$ORIGIN_IP:$STO_PORT/stats" >"$dir/origin-stats.json" || echo '{}' >"$dir/origin-stats.json"

  python3 - "$dir" "$n" "$dc" "${kill:-0}" "$RUNNERS" "$t0" "$t1" "$IMAGE_BYTES" \
    "$CHACHA_RATE" "$busy0" "$busy1" "${killed_at:-}" "${codes[*]}" "${tx0[*]}" "${tx1[*]}" "${cpu[*]}" \
    "${direct:-0}" >>"$OUT/results.jsonl" <<'EOF'
import json, os, re, sys
(d, n, dc, kill, m, t0, t1, image, rate, b0, b1, killed_at, codes, tx0, tx1, cpu, direct) = sys.argv[1:]
n, m, kill, image = int(n), int(m), int(kill), int(image)
wall = float(t1) - float(t0)
def rate_bits(s):
    u = re.fullmatch(r"([0-9.]+)([kmg]?)bit", s.lower())
    return float(u.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[u.group(2)] if u else 0
runs = []
for i in range(m):
    try:
        with open(os.path.join(d, f"r{i}.json")) as f:
            runs.append(json.load(f))
    except (OSError, ValueError):
        runs.append(None)
ok = sum(r["pulls_ok"] for r in runs if r)
failed = m - ok
secs = sorted(r["pull_seconds"]["max"] for r in runs if r and r["pulls_ok"])
def pct(p):
    if not secs: return None
    k = max(0, min(len(secs) - 1, -(-len(secs) * p // 100) - 1))
    return round(secs[int(k)], 2)
total = sum(r["bytes"] for r in runs if r)
st = json.load(open(os.path.join(d, "origin-stats.json")))
s307 = sum(r["http_statuses"].get("307", 0) for r in runs if r)
origin307 = st.get("statuses", {}).get("307", 0)
cache = {}
for r in runs:
    for k, v in (r or {}).get("cache_status", {}).items():
        cache[k] = cache.get(k, 0) + v
blobs_ok = all(r and r["digest_mismatches"] == 0 and all(b["verified"] == 1 for b in r["blobs"].values()) and len(r["blobs"]) > 0 for r in runs)
tx = [int(b) - int(a) for a, b in zip(tx0.split(), tx1.split())]
b0, b1 = [list(map(float, x.split())) for x in (b0, b1)]
busy = (b1[0] - b0[0]) / max(b1[1] - b0[1], 1)
link = rate_bits(rate) / 8
res = {
    "nodes": n, "direct_connect": dc, "kill": bool(kill), "direct": direct == "1", "killed_at_s": float(killed_at) if killed_at else None,
    "runners": m, "pulls_ok": ok, "pulls_failed": failed,
    "exit_codes": [int(c) for c in codes.split()],
    "blobs_verified": blobs_ok,
    "wall_s": round(wall, 2), "bytes": total,
    "aggregate_mib_s": round(total / 1048576 / wall, 1),
    "pull_p50_s": pct(50), "pull_p99_s": pct(99),
    "image_bytes": image,
    "origin_bytes": st.get("storage_body_bytes", 0) + st.get("registry_body_bytes", 0),
    "origin_images": round((st.get("storage_body_bytes", 0) + st.get("registry_body_bytes", 0)) / image, 3),
    "origin_full_ranged_304": [st.get("storage_full", 0), st.get("storage_ranged", 0), st.get("storage_not_modified", 0)],
    "origin_full_per_blob_max": max(st.get("full_per_blob", {}).values(), default=0),
    "origin_cuts": st.get("cuts", 0),
    "retries": sum(r["retries"] for r in runs if r),
    "client_cuts": sum(r["client_cuts"] for r in runs if r),
    "runner_206s": sum(r["http_statuses"].get("206", 0) for r in runs if r),
    "chacha_307s": s307 - origin307,
    "cache_status": cache,
    "chacha_tx_mib": [round(t / 1048576, 1) for t in tx],
    "chacha_link_util": [round(t / wall / link, 2) if link else None for t in tx],
    "chacha_cpu_s": [float(c) for c in cpu.split()],
    "machine_busy": round(busy, 2),
    "failures": [f for r in runs if r for f in r.get("failures", [])][:5],
}
print(json.dumps(res))
EOF
  for pid in "${cpids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Keep the run's logs, configs and summaries (not the caches) next to the results.
  local keep="$OUT/run-n$n-dc-$dc${kill:+-kill}${direct:+-direct}"
  mkdir -p "$keep"
  cp "$dir"/*.log "$dir"/*.out "$dir"/*.json "$dir"/*.yaml "$keep"/ 2>/dev/null || true
  tail -n1 "$OUT/results.jsonl" >&2
  cleanup
}

IMAGE_BYTES=$(timeout 600 python3 "$ROOT/scripts/fleet-origin.py" --dir "$WORK/image" \
  --layers "$LAYERS" --layer-mib "$LAYER_MIB" --prepare-only |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')
log "image: $LAYERS x $LAYER_MIB MiB + config = $IMAGE_BYTES bytes; runners $RUNNERS; chacha links $CHACHA_RATE, origin $ORIGIN_RATE"

if [ "$DIRECT_RUN" = 1 ]; then
  run_one "${NODES%% *}" "${DIRECT_CONNECT%% *}" "" 1
fi
for n in $NODES; do
  for dc in $DIRECT_CONNECT; do run_one "$n" "$dc" ""; done
done
if [ "$KILL_RUN" = 1 ]; then
  [ "$KILL_N" -ge 2 ] || die "KILL_N must be >= 2 (the runners go through the other hosts)"
  run_one "$KILL_N" "${DIRECT_CONNECT%% *}" 1
fi

python3 - "$OUT/results.jsonl" >"$OUT/table.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| N | direct-connect | kill | pulls ok/failed | aggregate MiB/s | pull p50 s | p99 s | origin MiB (images) | origin 200/206/304 | chacha 307s | retries | chacha link use | chacha CPU s | machine busy |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    kill = f"host 0 at {r['killed_at_s']} s" if r["kill"] else "-"
    dc = r["direct_connect"]
    if r.get("direct"):
        dc = "bypassed: runners pull from the origin"
    elif dc == "on" and r["nodes"] == 1:
        dc = "on (one host: nothing to redirect to)"
    elif dc == "on" and r["chacha_307s"] == 0:
        dc = "on (no 307: not in this build)"
    print(f"| {r['nodes']} | {dc} | {kill} | {r['pulls_ok']}/{r['pulls_failed']} | {r['aggregate_mib_s']} "
          f"| {r['pull_p50_s']} | {r['pull_p99_s']} | {r['origin_bytes'] / 1048576:.0f} ({r['origin_images']}) "
          f"| {'/'.join(map(str, r['origin_full_ranged_304']))} | {r['chacha_307s']} | {r['retries']} "
          f"| {' '.join(f'{u:.0%}' for u in r['chacha_link_util'])} | {' '.join(f'{c:.1f}' for c in r['chacha_cpu_s'])} | {r['machine_busy']:.0%} |")
EOF
cat "$OUT/table.md"
log "results: $OUT/results.jsonl, $OUT/table.md"
