#!/usr/bin/env bash
# bench/transfer.sh [SIZE_MIB=256] -- one blob over loopback, one peer, three ways, in one run:
#
#   1. depotmesh:   `depot-cache serve` -> `vehicle-peer fetch` (QUIC, every 16 KiB group
#                   verified, written to the store, then exported with a second verification)
#   2. nginx HTTPS + curl (TLS 1.3, one connection), the ordinary way to ship a file
#   3. a bare libp2p-stream copy (the `stream_copy` example): the same QUIC transport with no
#                   framing, hashing or disk -- the ceiling for (1)
#
# Prints MB/s and MB per CPU-second (both ends' CPU) for each, and the fetcher's peak RSS.
# MB = 10^6 bytes. Needs root for `apt-get install nginx-light` if nginx is missing.
# `RSS_ONLY=1 bench/transfer.sh 2048` runs only the depotmesh fetch of a 2 GiB blob and prints
# its peak RSS (the bound the vehicle peer must keep whatever the blob size).
set -euo pipefail
SIZE_MIB=${1:-256}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/depotmesh-bench.XXXXXX)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TICK=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime of one process

echo "building (release)..." >&2
# Two builds: `--example` would narrow one build of several packages to that example alone.
# The first builds what bench/testbed/run.sh builds, so neither script rebuilds the other's features.
(cd "$ROOT" && cargo build --release -q -p depot-cache -p vehicle-peer -p origin \
  && cargo build --release -q -p node --example stream_copy)
BIN=$TARGET/release

head -c $((SIZE_MIB << 20)) /dev/urandom > "$WORK/blob.bin"
BYTES=$((SIZE_MIB << 20))

# --- 1. depotmesh ---------------------------------------------------------------------------
ID=$("$BIN/depot-cache" import --data-dir "$WORK/depot" "$WORK/blob.bin" | cut -d' ' -f1)
"$BIN/depot-cache" serve --data-dir "$WORK/depot" --listen /ip4/127.0.0.1/udp/0/quic-v1 --open-mesh \
  --no-mdns > "$WORK/serve.out" 2> "$WORK/serve.err" &
SERVER=$!; PIDS+=("$SERVER")
for _ in $(seq 100); do [ -s "$WORK/serve.out" ] && break; sleep 0.05; done
ADDR=$(head -1 "$WORK/serve.out")
cat "$WORK/blob.bin" > /dev/null   # warm the page cache for both sides alike
s0=$(cpu_ticks "$SERVER")
/usr/bin/time -f '%e %U %S %M' -o "$WORK/fetch.time" \
  "$BIN/vehicle-peer" fetch --data-dir "$WORK/vehicle" --peer "$ADDR" --no-mdns --open-mesh \
  --listen /ip4/127.0.0.1/udp/0/quic-v1 --out "$WORK/out.bin" "$ID" > "$WORK/fetch.json" \
  2> "$WORK/fetch.err"
s1=$(cpu_ticks "$SERVER")
cmp -s "$WORK/blob.bin" "$WORK/out.bin" || { echo "depotmesh output differs!" >&2; exit 1; }
read -r WALL USR SYS RSS < "$WORK/fetch.time"
read -r TRANSFER_S FETCH_CPU < <(python3 -c "
import json; s = json.loads(open('$WORK/fetch.json').read().splitlines()[-1])
print(s['seconds'], s['cpu_seconds'])")
# CPU of the transfer: the fetch's own (it reports it, export excluded) plus the server's during
# the whole command (it idles while the fetcher exports). The whole command's CPU is printed too.
DM=$(python3 -c "
b=$BYTES; t=$TRANSFER_S; wall=$WALL; server=($s1-$s0)/$TICK
cpu=$FETCH_CPU+server; cmd=$USR+$SYS+server
print(f'{b/1e6/t:.0f} {b/1e6/wall:.0f} {cpu:.2f} {b/1e6/cpu:.0f} {cmd:.2f}')")
echo "depotmesh: transfer ${TRANSFER_S}s, whole command ${WALL}s (incl. export), peak RSS ${RSS} KiB" >&2
if [ "${RSS_ONLY:-0}" = 1 ]; then
  echo "blob $SIZE_MIB MiB: vehicle-peer fetch peak RSS $((RSS / 1024)) MiB, transfer ${TRANSFER_S} s"
  exit 0
fi
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true

# --- 2. nginx HTTPS + curl --------------------------------------------------------------------
if ! command -v nginx > /dev/null; then
  echo "installing nginx-light..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light > /dev/null
fi
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/key.pem" -out "$WORK/cert.pem" \
  -days 1 -subj "/CN=depot.bench" 2> /dev/null
mkdir -p "$WORK/nginx/logs" "$WORK/www"; ln "$WORK/blob.bin" "$WORK/www/blob.bin"
# nginx's worker runs unprivileged: let it reach the file.
chmod a+rx "$WORK" "$WORK/www"; chmod a+r "$WORK/blob.bin"
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  server {
    listen 127.0.0.1:18443 ssl;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.3;
    root $WORK/www;
  }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2> "$WORK/nginx/stderr" &
NGINX=$!; PIDS+=("$NGINX")
for _ in $(seq 100); do curl -sfk -o /dev/null https://127.0.0.1:18443/blob.bin -r 0-0 && break; sleep 0.05; done
WORKER=$(pgrep -P "$NGINX" | head -1)
w0=$(cpu_ticks "$WORKER")
/usr/bin/time -f '%e %U %S %M' -o "$WORK/curl.time" \
  curl -sfk -o "$WORK/curl.bin" -w '%{time_total}' https://127.0.0.1:18443/blob.bin > "$WORK/curl.out"
w1=$(cpu_ticks "$WORKER")
cmp -s "$WORK/blob.bin" "$WORK/curl.bin" || { echo "curl output differs!" >&2; exit 1; }
read -r CWALL CUSR CSYS CRSS < "$WORK/curl.time"
CT=$(cat "$WORK/curl.out")
NG=$(python3 -c "
b=$BYTES; t=$CT; cpu=$CUSR+$CSYS+($w1-$w0)/$TICK
print(f'{b/1e6/t:.0f} {b/1e6/$CWALL:.0f} {cpu:.2f} {b/1e6/cpu:.0f}')")
kill "$NGINX"; wait "$NGINX" 2>/dev/null || true

# --- 3. bare libp2p-stream copy ---------------------------------------------------------------
"$BIN/examples/stream_copy" "$SIZE_MIB" > "$WORK/stream.out" 2>&1
BARE=$(python3 - "$WORK/stream.out" <<'PY'
import re, sys
# The example prints "<label> <t> s <rate> MB/s <cpu> CPU-s <eff> MB/CPU-s"; its first measured
# row uses this crate's QUIC tuning.
for line in open(sys.argv[1]):
    m = re.search(r'depotmesh tuning\s+[0-9.]+ s\s+([0-9.]+) MB/s\s+([0-9.]+) CPU-s\s+([0-9.]+) MB/CPU-s', line)
    if m:
        print(m.group(1), m.group(2), m.group(3)); break
else:
    print('? ? ?')
PY
)

# --- table ----------------------------------------------------------------------------------
read -r DM_T DM_W DM_CPU DM_EFF DM_CMD_CPU <<< "$DM"
read -r NG_T NG_W NG_CPU NG_EFF <<< "$NG"
read -r BARE_T BARE_CPU BARE_EFF <<< "$BARE"
echo
echo "$SIZE_MIB MiB over loopback, one peer ($(nproc) cores; MB = 10^6 bytes)"
printf '%-44s %10s %14s %12s %14s\n' method "MB/s" "MB/s (cmd)" "CPU s" "MB/CPU-s"
printf '%-44s %10s %14s %12s %14s\n' "depotmesh serve -> fetch (verify + store)" "$DM_T" "$DM_W" "$DM_CPU" "$DM_EFF"
printf '%-44s %10s %14s %12s %14s\n' "nginx HTTPS + curl (TLS 1.3)" "$NG_T" "$NG_W" "$NG_CPU" "$NG_EFF"
printf '%-44s %10s %14s %12s %14s\n' "bare libp2p-stream copy (ceiling)" "$BARE_T" "-" "$BARE_CPU" "$BARE_EFF"
echo "vehicle-peer fetch peak RSS: $((RSS / 1024)) MiB"
echo "MB/s = bytes / transfer time (depotmesh: from its summary; curl: time_total);"
echo "MB/s (cmd) = bytes / whole command wall time (depotmesh includes writing the verified file out)."
echo "CPU s = user + system of both ends during the transfer (depotmesh: the fetch's own figure,"
echo "  export excluded, plus the server's; the whole command including export took ${DM_CMD_CPU} CPU s)."
python3 -c "
print(f'depotmesh / bare copy: {$DM_T/$BARE_T:.2f}x in MB/s, {$DM_EFF/$BARE_EFF:.2f}x in MB/CPU-s')"
