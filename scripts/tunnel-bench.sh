#!/usr/bin/env bash
# Blind CONNECT tunnel throughput against a direct connection (issue 12), on links where
# the link, not the CPU, is the limit. Three network namespaces in a row, joined by veth
# pairs, every link shaped with tbf at RATE both ways:
#
#   client 198.18.1.2 ── 198.18.1.1  proxy  198.18.2.1 ── 198.18.2.2 server
#
# "direct": the client fetches SIZE_MIB from the server with the proxy namespace acting as
# a plain router (ip_forward); "tunnel": the client sends CONNECT to chacha in the proxy
# namespace (the server's port in tls-interceptor.passthrough-ports, so it is tunnelled
# blind) and fetches the same bytes through it (curl --proxytunnel). Both paths cross the
# same two links. The server is a small sendfile(2) origin (python3), the client curl.
#
#   sudo scripts/tunnel-bench.sh            # RATES="1gbit 4gbit", 1 GiB, medians of 3
#   sudo scripts/tunnel-bench.sh cleanup    # only remove what an aborted run left behind
#
# Root and iproute2 (`ip netns`, veth, `tc ... tbf`) are required, plus curl and python3.
# Addresses come only from 198.18.0.0/15 (RFC 2544's benchmarking range) and live only
# inside the namespaces; the default namespace gets no interface, address or route.
# Everything is torn down at exit, on failure too.
#
# Knobs (environment):
#   TB_PREFIX   name prefix of the namespaces (default tbench); leftovers with it are
#               removed at start, everything at exit
#   RATES       link rates to run, tc syntax; "none" = unshaped (default "1gbit 4gbit")
#   SIZE_MIB    bytes per transfer, in MiB (default 1024)
#   REPS        transfers per rate and path; medians are reported (default 3)
#   TBF_BURST   tbf burst (default 1mb)
#   WORKERS     chacha workers (default 1)
#   CHACHA_BIN  the binary (default target/release/chacha)
#   OUT         where results go (default: a new dir under /tmp): results.jsonl (one JSON
#               object per rate), table.md, chacha's config and log
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${TB_PREFIX:-tbench}
RATES=${RATES:-"1gbit 4gbit"}
SIZE_MIB=${SIZE_MIB:-1024}
REPS=${REPS:-3}
TBF_BURST=${TBF_BURST:-1mb}
WORKERS=${WORKERS:-1}
CHACHA_BIN=${CHACHA_BIN:-$ROOT/target/release/chacha}
STEP=20 # seconds any setup step or readiness wait may take

CLI=$P-cli
PX=$P-px
SRV=$P-srv
CLI_IP=198.18.1.2
PXC_IP=198.18.1.1
PXS_IP=198.18.2.1
SRV_IP=198.18.2.2
SRV_PORT=8000
PX_PORT=8080
NET=198.18.0.0/15
SIZE=$((SIZE_MIB * 1048576))

log() { echo "tunnel-bench: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

our_netns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${P}-(cli|px|srv)$" || true; }

cleanup() {
  local ns pid
  for ns in $(our_netns); do
    # Processes started in our namespaces (chacha, the origin, curl): by id.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for ns in $(our_netns); do
    # Deleting a namespace destroys the veths inside it.
    timeout $STEP ip netns del "$ns" 2>/dev/null || true
  done
  [ -z "$(our_netns)" ] || log "WARNING: namespaces left: $(our_netns | tr '\n' ' ')"
}

if [ "${1:-}" = cleanup ]; then cleanup; exit 0; fi
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
command -v ip >/dev/null || die "needs iproute2 (ip)"
command -v tc >/dev/null || die "needs iproute2 (tc)"
command -v curl >/dev/null || die "needs curl (the client)"
command -v python3 >/dev/null || die "needs python3 (the origin)"
[ -x "$CHACHA_BIN" ] || die "no $CHACHA_BIN (cargo build --release)"
[ "$REPS" -ge 1 ] || die "REPS >= 1"
[ "$SIZE_MIB" -ge 1 ] || die "SIZE_MIB >= 1"

WORK=$(mktemp -d /tmp/$P-work.XXXXXX)
OUT=${OUT:-$(mktemp -d /tmp/$P-out.XXXXXX)}
mkdir -p "$OUT"
: >"$OUT/results.jsonl"
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
cleanup

# The body: SIZE bytes written out and read once, so that every transfer finds it in the
# page cache (a sparse file would have the first transfer pay for zeroing its pages).
head -c "$SIZE" /dev/urandom >"$WORK/blob"
cat "$WORK/blob" >/dev/null

# The origin: HTTP/1.1 GET of any path answers the blob with sendfile(2), one thread per
# connection, then closes. `GET /health` answers 2 bytes.
cat >"$WORK/origin.py" <<'EOF'
import os, socket, sys, threading
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
size = os.path.getsize(path)
def serve(c):
    with c:
        head = b""
        while b"\r\n\r\n" not in head:
            b = c.recv(4096)
            if not b:
                return
            head += b
        if head.startswith(b"GET /health "):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            return
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        with open(path, "rb") as f:
            c.sendfile(f)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF

# One link: a veth pair between namespaces A (device DA) and B (device DB), RATE on the
# egress of both ends (so both directions are shaped).
add_link() {
  local a=$1 da=$2 b=$3 db=$4 rate=$5
  timeout $STEP ip link add name "$da" netns "$a" type veth peer name "$db" netns "$b"
  timeout $STEP ip -n "$a" link set "$da" up
  timeout $STEP ip -n "$b" link set "$db" up
  if [ "$rate" != none ]; then
    timeout $STEP ip netns exec "$a" tc qdisc add dev "$da" root tbf rate "$rate" burst "$TBF_BURST" latency 50ms
    timeout $STEP ip netns exec "$b" tc qdisc add dev "$db" root tbf rate "$rate" burst "$TBF_BURST" latency 50ms
  fi
}

build_network() {
  local rate=$1 ns
  for ns in "$CLI" "$PX" "$SRV"; do
    timeout $STEP ip netns add "$ns"
    timeout $STEP ip -n "$ns" link set lo up
  done
  add_link "$CLI" eth0 "$PX" eth-c "$rate"
  add_link "$PX" eth-s "$SRV" eth0 "$rate"
  timeout $STEP ip -n "$CLI" addr add "$CLI_IP/24" dev eth0
  timeout $STEP ip -n "$PX" addr add "$PXC_IP/24" dev eth-c
  timeout $STEP ip -n "$PX" addr add "$PXS_IP/24" dev eth-s
  timeout $STEP ip -n "$SRV" addr add "$SRV_IP/24" dev eth0
  timeout $STEP ip -n "$CLI" route add default via "$PXC_IP"
  timeout $STEP ip -n "$SRV" route add default via "$PXS_IP"
  # The proxy host routes between its two links ("direct" goes through it too).
  timeout $STEP ip netns exec "$PX" sysctl -q -w net.ipv4.ip_forward=1
}

# Polls a URL from inside a namespace until it answers (bounded).
wait_http() {
  local ns=$1 url=$2 deadline=$((SECONDS + STEP))
  until ip netns exec "$ns" curl -s -o /dev/null --noproxy '*' --max-time 1 "$url"; do
    [ $SECONDS -lt $deadline ] || die "$url did not answer within ${STEP}s (ns $ns)"
    sleep 0.1
  done
}

proc_cpu() { # utime + stime of a pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}
cpu_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }

# One transfer from the client namespace; prints "bytes seconds" (curl's own timing: the
# whole transfer, connection and CONNECT included). $1 = direct|tunnel.
fetch() {
  local how=$1 url="http://$SRV_IP:$SRV_PORT/blob" timeout=$((SIZE_MIB / 10 + STEP))
  local -a px=(--noproxy '*')
  [ "$how" = tunnel ] && px=(--proxytunnel --proxy "http://$PXC_IP:$PX_PORT")
  ip netns exec "$CLI" env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy \
    curl -sS --fail -o /dev/null --max-time "$timeout" "${px[@]}" \
    -w '%{size_download} %{time_total}\n' "$url"
}

run_rate() {
  local rate=$1 dir="$OUT/rate-$1" i how got secs c0 c1 b0 b1
  log "rate $rate: building the network"
  cleanup
  mkdir -p "$dir"
  build_network "$rate"

  ip netns exec "$SRV" python3 "$WORK/origin.py" "$SRV_IP" "$SRV_PORT" "$WORK/blob" \
    >"$dir/origin.log" 2>&1 &
  disown # (cleanup ends it by id)
  wait_http "$SRV" "http://$SRV_IP:$SRV_PORT/health"

  {
    echo "addr: $PXC_IP:$PX_PORT"
    echo "workers: $WORKERS"
    echo "access:"
    echo "  # 198.18.0.0/15 is not in the default (private) client list."
    echo "  clients: [$NET]"
    echo "  destinations:"
    echo "    allow: [$NET]"
    echo "tls-interceptor:"
    echo "  cert: $WORK/ca/ca.crt"
    echo "  key: $WORK/ca/ca.key"
    echo "  intercept: []"
    echo "  passthrough-ports: [$SRV_PORT]"
  } >"$dir/chacha.yaml"
  timeout $STEP "$CHACHA_BIN" check -f "$dir/chacha.yaml" >"$dir/chacha.check" 2>&1 ||
    { cat "$dir/chacha.check" >&2; die "chacha check rejected $dir/chacha.yaml"; }
  ip netns exec "$PX" env RUST_LOG=${RUST_LOG:-info} "$CHACHA_BIN" run -f "$dir/chacha.yaml" \
    >"$dir/chacha.log" 2>&1 &
  local cpid=$!
  disown
  wait_http "$PX" "http://$PXC_IP:$PX_PORT/health"

  local -a direct=() tunnel=() cpu=() busy=()
  for ((i = 0; i < REPS; i++)); do
    # Alternate the order so that drift (other load on the machine) hits both paths alike.
    local order="direct tunnel"
    ((i % 2)) && order="tunnel direct"
    for how in $order; do
      c0=$(proc_cpu "$cpid")
      b0=$(cpu_busy)
      read -r got secs < <(fetch "$how") || die "$how transfer failed at $rate"
      c1=$(proc_cpu "$cpid")
      b1=$(cpu_busy)
      [ "$got" = "$SIZE" ] || die "$how transfer got $got of $SIZE bytes at $rate"
      log "rate $rate rep $i $how: $SIZE bytes in ${secs}s"
      if [ "$how" = direct ]; then
        direct+=("$secs")
      else
        tunnel+=("$secs")
        cpu+=("$(python3 -c "print($c1 - $c0)")")
        busy+=("$(python3 -c "b0, b1 = '$b0'.split(), '$b1'.split(); print((float(b1[0]) - float(b0[0])) / max(float(b1[1]) - float(b0[1]), 1))")")
      fi
    done
  done
  kill "$cpid" 2>/dev/null || true

  python3 - "$rate" "$SIZE" "${direct[*]}" "${tunnel[*]}" "${cpu[*]}" "${busy[*]}" \
    >>"$OUT/results.jsonl" <<'EOF'
import json, statistics, sys
rate, size, direct, tunnel, cpu, busy = sys.argv[1:]
size = int(size)
mib = lambda s: size / 1048576 / float(s)
d = [round(mib(s), 1) for s in direct.split()]
t = [round(mib(s), 1) for s in tunnel.split()]
c = [round(float(x) * 1000 / (size / 2**30)) for x in cpu.split()]
med = lambda v: statistics.median(v)
print(json.dumps({
    "rate": rate, "size_bytes": size,
    "direct_mib_s": d, "tunnel_mib_s": t,
    "direct_median_mib_s": med(d), "tunnel_median_mib_s": med(t),
    "ratio": round(med(t) / med(d), 3),
    "chacha_cpu_ms_per_gib": c, "chacha_cpu_ms_per_gib_median": med(c),
    "machine_busy_tunnel": round(med([float(b) for b in busy.split()]), 2),
}))
EOF
  tail -n1 "$OUT/results.jsonl" >&2
  cleanup
}

mkdir -p "$WORK/ca"
timeout $STEP "$CHACHA_BIN" ca create --out "$WORK/ca" >/dev/null 2>&1 || die "chacha ca create failed"
log "$SIZE_MIB MiB per transfer, $REPS reps, rates: $RATES"
for rate in $RATES; do run_rate "$rate"; done

python3 - "$OUT/results.jsonl" >"$OUT/table.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| link rate | MiB | direct MiB/s (median; runs) | tunnel MiB/s (median; runs) | tunnel/direct | chacha CPU ms/GiB | machine busy (tunnel) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['rate']} | {r['size_bytes'] >> 20} | {r['direct_median_mib_s']} ({', '.join(map(str, r['direct_mib_s']))}) "
          f"| {r['tunnel_median_mib_s']} ({', '.join(map(str, r['tunnel_mib_s']))}) | {r['ratio']:.2f}x "
          f"| {r['chacha_cpu_ms_per_gib_median']} | {r['machine_busy_tunnel']:.0%} |")
EOF
cat "$OUT/table.md"
log "results: $OUT/results.jsonl, $OUT/table.md"
