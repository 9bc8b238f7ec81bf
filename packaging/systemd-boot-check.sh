#!/usr/bin/env bash
# Boots a real systemd as PID 1 of its own container (systemd-nspawn --boot on a Debian root made
# by mmdebstrap from the host's apt sources), installs the three Debian packages in it with dpkg,
# and follows docs/operate.md sections 1-3 and 6 on that one machine with the packaged units:
#   origin init (offline keys on their own medium), director-cert, operators; origin-serve and
#   origin-timestamp.timer by `systemctl enable --now`, a timestamp run by `systemctl start
#   origin-timestamp.service`; the depot's identity, membership certificate, /etc/depotmesh and
#   depot.toml, depot-cache by systemctl; `vehicle-peer provision`, `origin vehicle register`,
#   vehicle-peer by systemctl; then a release with a delta assigned to the vehicle, installed and
#   reported; a reboot started from vehicle-peer's sandbox (`systemctl reboot`, as a gateway's
#   `[boot] reboot_command`), the enabled units up again after it; `systemctl stop vehicle-peer`
#   while its depot is down (within TimeoutStopSec); and a purge while the origin's units run.
# It checks, printing PASS or FAIL for each, that every unit runs under its hardening (its user,
# no new privileges, seccomp, capabilities, its own mount namespace), writes where it must (state
# directories, the vehicle's banks, boot environment, reports and renewed member.json under
# /var/lib/depotmesh), reads /etc/depotmesh and cannot write it, that nothing restarted or failed,
# and that the units' journal is plain text (no ANSI escapes, no binary fields). The last line
# says "N passed, M failed"; the exit status is non-zero when a check failed.
#
#   packaging/systemd-boot-check.sh [--debs DIR | --bin-dir DIR] [--cache DIR] [--fresh-root]
#                                   [--keep]
#
# --debs        install the depotmesh-*.deb in DIR (default: build them with build-debs.sh
#               --profile dev --compression gzip, from --bin-dir);
# --bin-dir     the debug binaries to package (default target/debug when all three are there,
#               else build-debs.sh builds them);
# --cache       where the container's base root is kept as a tarball, made once by mmdebstrap and
#               made again when the package list or the apt sources change (default
#               /var/cache/depotmesh/systemd-boot-check);
# --fresh-root  make the base root again;
# --keep        leave the container running and its directory in place at the end (printed), to
#               look around: `nsenter -t LEADER -a systemctl status`.
# Environment: DEPOTMESH_DEBIAN_SOURCES (the apt sources for mmdebstrap: a deb822 file, a
# one-line "deb ..." entry or a mirror URL; default the host's /etc/apt/sources.list.d/
# debian.sources), DEPOTMESH_DEBIAN_SUITE (default the host's VERSION_CODENAME, bookworm
# elsewhere).
#
# Needs root with CAP_SYS_ADMIN (namespaces, mounts), and Debian's systemd-container
# (systemd-nspawn), mmdebstrap, util-linux (nsenter), curl and python3, plus what build-debs.sh
# needs (dpkg-dev, binutils); the host's PID 1 need not be systemd. The container has its own
# network namespace with only loopback: the three roles listen on 127.0.1.1, 127.0.2.1 and
# 127.0.3.1 as in docs/operate.md, and nothing leaves it.
#
# How long (2 cores shared with builds, Debian 12): the base root once, 35 s to 3 minutes
# (mmdebstrap downloads about 60 packages; 74 s last time); the packages 15-18 s (build-debs.sh,
# gzip); then 40-70 s for the boot, the install, the three roles, the rollout, the probes, the
# reboot, the stop (20 s of it) and the purge, and a few seconds to tear down. So 55-90 s with
# the root cached and the packages given, 2.5-4 minutes from nothing (162 s last time).
set -uo pipefail
# The checks are functions run through check/must/wait_for.
# shellcheck disable=SC2317

usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; }
die() {
  echo "systemd-boot-check.sh: $*" >&2
  exit 2
}

debs_dir=""
bin_dir=""
cache=/var/cache/depotmesh/systemd-boot-check
fresh_root=no
keep=no
while [ $# -gt 0 ]; do
  case "$1" in
  --debs) [ $# -ge 2 ] || die "--debs needs a value"; debs_dir=$(realpath -m "$2"); shift 2 ;;
  --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a value"; bin_dir=$(realpath -m "$2"); shift 2 ;;
  --cache) [ $# -ge 2 ] || die "--cache needs a value"; cache=$(realpath -m "$2"); shift 2 ;;
  --fresh-root) fresh_root=yes; shift ;;
  --keep) keep=yes; shift ;;
  -h | --help) usage; exit 0 ;;
  *) die "unknown argument $1 (see --help)" ;;
  esac
done

workspace=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || die "needs root (namespaces, mounts, dpkg in the container)"
for need in systemd-nspawn:systemd-container mmdebstrap:mmdebstrap nsenter:util-linux \
  curl:curl python3:python3; do
  command -v "${need%%:*}" >/dev/null || die "${need%%:*} is missing: apt-get install ${need#*:}"
done

start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start)) s"; }
passed=0
failed=0
work=$(mktemp -d /var/tmp/depotmesh-boot-check.XXXXXX)
root=$work/root
nspawn_pid=""
leader=""

# ---- Reporting ----

# check NAME COMMAND...: runs it (in this shell: what it sets stays set), prints PASS or FAIL
# with the seconds it took, and on FAIL the end of its output.
check() {
  local name=$1 began
  shift
  began=$(date +%s)
  if "$@" >"$work/output" 2>&1 </dev/null; then
    echo "PASS  $name ($(($(date +%s) - began)) s)"
    sed -n 's/^note: /        /p' "$work/output"
    passed=$((passed + 1))
  else
    echo "FAIL  $name ($(($(date +%s) - began)) s)"
    tail -n 12 "$work/output" | cut -c1-240 | sed 's/^/        /'
    failed=$((failed + 1))
    return 1
  fi
}
# must NAME COMMAND...: a check the rest depends on; its failure ends the run.
must() { check "$@" || finish; }

# ---- The container ----

# Runs a command in the container, as a root shell there would.
ct() { nsenter -t "$leader" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
# Runs a host command in the container's network namespace only (host files, container network).
ctnet() { nsenter -t "$leader" -n "$@"; }
# As the origin's user, from /, as docs/operate.md's commands.
as_origin() { ct runuser -u depotmesh-origin -- origin --dir /var/lib/depotmesh/origin "$@"; }
# wait_for SECONDS COMMAND...: until it succeeds, every half second.
wait_for() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { "$@"; return 1; }
    sleep 0.5
  done
}
journal() { ct journalctl --no-pager -o cat -u "$1"; }
# (grep reads its whole input: with pipefail, grep -q's early exit would fail the pipeline.)
journal_has() { journal "$1" | grep -- "$2" >/dev/null || { echo "no '$2' in the journal of $1:"; journal "$1" | tail -n 8; return 1; }; }
# A JSON value from a file of the container: json FILE PYTHON-EXPRESSION-ON-d.
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$root$1"; }

boot() {
  systemd-nspawn --quiet --directory="$root" --machine="depotmesh-check-$$" --register=no \
    --keep-unit --private-network --boot --console=passive >>"$work/console.log" 2>&1 &
  nspawn_pid=$!
  leader=""
  local deadline=$(($(date +%s) + 20))
  # The container's PID 1: systemd-nspawn's child once it runs systemd.
  while [ -z "$leader" ] && [ "$(date +%s)" -lt "$deadline" ]; do
    sleep 0.2
    local child
    for child in $(pgrep -P "$nspawn_pid"); do
      [ "$(cat "/proc/$child/comm" 2>/dev/null)" != systemd ] || leader=$child
    done
  done
  [ -n "$leader" ] || { cat "$work/console.log"; return 1; }
  # Until systemd answers, then until the boot is over: "running", or "degraded" with a failed
  # unit.
  wait_for 30 ct test -S /run/systemd/private || return 1
  local state
  state=$(timeout 60 nsenter -t "$leader" -a systemctl is-system-running --wait 2>&1)
  [ "$(ct cat /proc/1/comm)" = systemd ] || { echo "PID 1 is $(ct cat /proc/1/comm)"; return 1; }
  [ "$state" = running ] || { echo "system $state"; ct systemctl --failed --no-pager; return 1; }
}

# Waits for the container to end (after a poweroff or a reboot, which ends systemd-nspawn).
ended() {
  local deadline=$(($(date +%s) + $1))
  while kill -0 "$nspawn_pid" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
  wait "$nspawn_pid" 2>/dev/null
  nspawn_pid=""
}

finished=no
finish() {
  [ "$finished" = no ] || exit
  finished=yes
  trap - EXIT
  if [ "$keep" = yes ] && [ -n "$nspawn_pid" ]; then
    echo "kept: the container runs (leader $leader, systemd-nspawn $nspawn_pid) on $root"
    echo "      stop it: nsenter -t $leader -a systemctl poweroff; rm -rf $work"
  else
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
      ct systemctl poweroff >/dev/null 2>&1
      if ! ended 20; then
        kill "$nspawn_pid" 2>/dev/null
        ended 10 || { kill -9 "$leader" "$nspawn_pid" 2>/dev/null; ended 10; }
      fi
    fi
    if [ -n "$nspawn_pid" ]; then
      echo "the container (systemd-nspawn $nspawn_pid) did not stop: $work left as it is"
      failed=$((failed + 1))
    else
      rm -rf "$work"
    fi
  fi
  echo "took $(elapsed)"
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
  exit
}
trap 'echo "interrupted"; failed=$((failed + 1)); finish' INT TERM
trap 'failed=$((failed + 1)); echo "FAIL  the script itself stopped early"; finish' EXIT

# ---- The packages ----

build_debs() {
  local args=(--profile dev --compression gzip --out "$work/debs")
  if [ -n "$bin_dir" ]; then
    args+=(--bin-dir "$bin_dir")
  elif [ -x "$workspace/target/debug/origin" ] && [ -x "$workspace/target/debug/depot-cache" ] &&
    [ -x "$workspace/target/debug/vehicle-peer" ]; then
    args+=(--bin-dir "$workspace/target/debug")
  fi
  "$workspace/packaging/build-debs.sh" "${args[@]}"
}
if [ -z "$debs_dir" ]; then
  must "packages built (build-debs.sh --profile dev)" build_debs
  debs_dir=$work/debs
fi
debs=("$debs_dir"/depotmesh-origin_*.deb "$debs_dir"/depotmesh-depot_*.deb "$debs_dir"/depotmesh-vehicle_*.deb)
must "the three packages are there" ls "${debs[@]}"

# ---- The base root ----

sources=${DEPOTMESH_DEBIAN_SOURCES:-}
if [ -z "$sources" ]; then
  for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$candidate" ] && grep -q 'debian' "$candidate"; then
      sources=$candidate
      break
    fi
  done
  sources=${sources:-http://deb.debian.org/debian}
fi
suite=${DEPOTMESH_DEBIAN_SUITE:-}
if [ -z "$suite" ]; then
  suite=$(. /etc/os-release && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}")
  suite=${suite:-bookworm}
fi
# systemd as init, D-Bus for logind; the packages' own dependencies (libc6, libgcc-s1) are in
# the essential set already.
packages=systemd,systemd-sysv,dbus
key=$({ echo "$suite $packages"; if [ -f "$sources" ]; then cat "$sources"; else echo "$sources"; fi; } |
  sha256sum | cut -c1-16)
tarball=$cache/$suite-$key.tar
make_root() {
  mkdir -p "$cache"
  local partial
  partial=$(mktemp "$cache/.partial.XXXXXX")
  mmdebstrap --quiet --variant=essential --include="$packages" --format=tar \
    "$suite" "$partial" "$sources" &&
    mv "$partial" "$tarball" || { rm -f "$partial"; return 1; }
}
if [ "$fresh_root" = yes ] || [ ! -s "$tarball" ]; then
  must "base root made (mmdebstrap $suite, essential + $packages, from $sources)" make_root
fi
unpack_root() {
  mkdir "$root" &&
    tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$tarball" &&
    echo depotmesh-check >"$root/etc/hostname" &&
    mkdir -p "$root/srv/debs" && cp "${debs[@]}" "$root/srv/debs/"
}
must "root unpacked from $tarball" unpack_root

# ---- Boot ----

must "systemd boots as PID 1 of the container (is-system-running: running)" boot

# ---- Install ----

must "dpkg -i the three packages" ct sh -c 'dpkg -i /srv/debs/*.deb'
state_dirs() {
  local want="depotmesh-origin 700
depotmesh-depot 750
root 700" got
  got=$(ct stat -c '%U %a' /var/lib/depotmesh/origin /var/lib/depotmesh/depot /var/lib/depotmesh/vehicle)
  [ "$got" = "$want" ] || { echo "got: $got"; return 1; }
}
check "users and state directories made (sysusers.d, tmpfiles.d)" state_dirs
nothing_started() {
  local unit
  for unit in origin-serve.service origin-timestamp.timer depot-cache.service vehicle-peer.service; do
    [ "$(ct systemctl is-enabled "$unit")" = disabled ] || { echo "$unit enabled"; return 1; }
    ! ct systemctl -q is-active "$unit" || { echo "$unit active"; return 1; }
  done
}
check "the install enabled and started nothing" nothing_started

# Checks a service's sandbox from /proc: its user, no new privileges, a seccomp filter, the
# capabilities it may have (hex), its own mount namespace.
sandboxed() {
  local unit=$1 user=$2 caps=$3 pid status
  pid=$(ct systemctl show -P MainPID "$unit")
  [ -n "$pid" ] && [ "$pid" != 0 ] || { echo "$unit has no main process"; return 1; }
  status=$(ct cat "/proc/$pid/status")
  local uid
  uid=$(ct id -u "$user")
  grep -Eq "^Uid:\s+$uid\s" <<<"$status" || { grep '^Uid' <<<"$status"; return 1; }
  grep -Eq '^NoNewPrivs:\s+1$' <<<"$status" || { echo "NoNewPrivs not set"; return 1; }
  grep -Eq '^Seccomp:\s+2$' <<<"$status" || { echo "no seccomp filter"; return 1; }
  grep -Eq "^CapEff:\s+0*$caps$" <<<"$status" || { grep '^Cap' <<<"$status"; return 1; }
  [ "$(ct readlink "/proc/$pid/ns/mnt")" != "$(ct readlink /proc/1/ns/mnt)" ] ||
    { echo "no mount namespace of its own"; return 1; }
}
# A service runs, and has not restarted.
running() {
  ct systemctl -q is-active "$1" || { ct systemctl status --no-pager "$1"; return 1; }
  local restarts
  restarts=$(ct systemctl show -P NRestarts "$1")
  [ "$restarts" = 0 ] || { echo "$1 restarted $restarts times"; journal "$1" | tail -n 15; return 1; }
}

# ---- 1. The origin ----

origin_init() {
  ct sh -c 'mkdir -p /srv/opdoc/usb /srv/opdoc/ops /srv/opdoc/roots /srv/opdoc/fw &&
    chown depotmesh-origin: /srv/opdoc/usb /srv/opdoc/ops /srv/opdoc/roots && chmod 700 /srv/opdoc/usb' &&
    as_origin --offline-keys /srv/opdoc/usb init --actor root-admin &&
    as_origin director-cert --name director.fleet.test --name 127.0.1.1 --actor root-admin &&
    as_origin operator add factory --role provisioner --out /srv/opdoc/ops --actor root-admin &&
    as_origin operator add alice --role release-manager --out /srv/opdoc/ops --actor root-admin &&
    ct test -s /srv/opdoc/usb/image-root.key.json
}
must "origin init with offline keys, director-cert, operators (as depotmesh-origin)" origin_init
must "systemctl enable --now origin-serve origin-timestamp.timer" \
  ct systemctl enable --now origin-serve.service origin-timestamp.timer
must "origin-serve listens (journal: director listening, mesh: serving)" \
  wait_for 20 journal_has origin-serve.service 'mesh: serving the repositories on'
origin_peer=$(journal origin-serve.service | sed -n 's|.*mesh: serving the repositories on .*/p2p/\([1-9A-Za-z]*\).*|\1|p' | head -n 1)
dashboard() {
  local code
  code=$(ctnet curl -s -o /dev/null -w '%{http_code}' \
    --cacert "$root/var/lib/depotmesh/origin/tls/director-ca.pem" https://127.0.1.1:8470/)
  [ "$code" = 200 ] || { echo "HTTP $code"; return 1; }
}
check "the director answers HTTPS with its CA (dashboard 200)" dashboard
check "origin-serve sandboxed: depotmesh-origin, NoNewPrivs, seccomp, no capability, own mounts" \
  sandboxed origin-serve.service depotmesh-origin 0

timestamp_version() { json /var/lib/depotmesh/origin/image/metadata/timestamp.json "d['signed']['version']"; }
timestamp_run() {
  local before after
  before=$(timestamp_version) || return 1
  ct systemctl start origin-timestamp.service || { journal origin-timestamp.service | tail; return 1; }
  [ "$(ct systemctl show -P Result origin-timestamp.service)" = success ] || return 1
  journal_has origin-timestamp.service 'image: timestamp re-signed' || return 1
  after=$(timestamp_version)
  [ "$after" -gt "$before" ] || { echo "timestamp version $before, then $after"; return 1; }
  echo "timestamp v$before -> v$after"
}
check "systemctl start origin-timestamp.service re-signs (Result=success, version grew)" timestamp_run
timer_scheduled() {
  ct systemctl -q is-active origin-timestamp.timer || { ct systemctl status --no-pager origin-timestamp.timer; return 1; }
  local next
  next=$(ct systemctl show -P NextElapseUSecRealtime origin-timestamp.timer)
  [ -n "$next" ] || { ct systemctl list-timers --all --no-pager; return 1; }
  echo "next run: $next"
}
check "origin-timestamp.timer active, next run scheduled" timer_scheduled

ct sh -c 'head -c 4000000 /dev/urandom >/srv/opdoc/fw/gw-1.0.bin && cp /srv/opdoc/fw/gw-1.0.bin /srv/opdoc/fw/gw-2.0.bin &&
  printf 2.0 | dd of=/srv/opdoc/fw/gw-2.0.bin bs=1 seek=1000 conv=notrunc status=none && chmod 644 /srv/opdoc/fw/*'
first_release() {
  as_origin --offline-keys /srv/opdoc/usb release /srv/opdoc/fw/gw-1.0.bin --name gw/1.0.bin \
    --hardware-id gateway-v1 --release-counter 1 --actor alice &&
    as_origin root image --out /srv/opdoc/roots/image-root.json --actor root-admin &&
    as_origin root director --out /srv/opdoc/roots/director-root.json --actor root-admin
}
must "a first release and the root metadata (origin release, origin root)" first_release
fleet_key=$(as_origin member key --actor root-admin | sed -n 's/.*"fleet_key": *"\([0-9a-f]*\)".*/\1/p')
must "the fleet key (origin member key)" test -n "$fleet_key"

# ---- 2. The depot ----

depot_peer=$(ct runuser -u depotmesh-depot -- depot-cache identity --data-dir /var/lib/depotmesh/depot)
must "depot-cache identity (as depotmesh-depot)" test -n "$depot_peer"
depot_setup() {
  as_origin member issue --role depot --peer "$depot_peer" --actor root-admin >"$root/srv/opdoc/depot-member.json" &&
    ct sh -c 'install -m 0644 /srv/opdoc/depot-member.json /etc/depotmesh/member.json &&
      install -m 0644 /srv/opdoc/roots/image-root.json /srv/opdoc/roots/director-root.json /etc/depotmesh/ &&
      install -m 0644 /var/lib/depotmesh/origin/tls/director-ca.pem /etc/depotmesh/director-ca.pem' &&
    sed -i -e 's|^listen = .*|listen = ["/ip4/127.0.2.1/udp/4433/quic-v1"]|' \
      -e 's|^cap_bytes = .*|cap_bytes = 2_000_000_000|' -e 's|^http = .*|http = "127.0.2.1:9464"|' \
      -e "s|^upstream = .*|upstream = [\"/ip4/127.0.1.1/udp/7470/quic-v1/p2p/$origin_peer\"]|" \
      -e 's|^vehicles = .*|vehicles = ["WDB9634031L123456"]|' -e 's|^interval_secs = .*|interval_secs = 3|' \
      -e 's|^windows = |# windows = |' -e 's|^director_url = .*|director_url = "https://127.0.1.1:8470"|' \
      -e "s|^fleet_keys = .*|fleet_keys = [\"$fleet_key\"]|" "$root/etc/depotmesh/depot.toml" &&
    grep -q "$origin_peer" "$root/etc/depotmesh/depot.toml"
}
must "depot membership certificate, /etc/depotmesh, depot.toml (section 2)" depot_setup
must "systemctl enable --now depot-cache" ct systemctl enable --now depot-cache.service
check "depot-cache admitted by the origin's node and prefetched the release" \
  wait_for 30 journal_has depot-cache.service 'prefetch done repository=image'
depot_status() {
  local admitted
  admitted=$(ctnet curl -s http://127.0.2.1:9464/status |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["membership"]["admitted"])')
  [ "${admitted:-0}" -ge 1 ] || { echo "admitted: $admitted"; return 1; }
}
check "the depot's /status: membership.admitted >= 1" depot_status
check "depot-cache sandboxed: depotmesh-depot, NoNewPrivs, seccomp, no capability, own mounts" \
  sandboxed depot-cache.service depotmesh-depot 0
store_written() {
  local files
  files=$(ct find /var/lib/depotmesh/depot -type f -user depotmesh-depot | wc -l)
  [ "$files" -gt 0 ] || return 1
  ! ct find /var/lib/depotmesh/depot ! -user depotmesh-depot | grep . || return 1
}
check "the depot wrote its store in its StateDirectory, all its user's" store_written

# ---- 3. The vehicle ----

vehicle_setup() {
  ct sh -c "cd / && vehicle-peer provision --dir /var/lib/depotmesh/vehicle --vin WDB9634031L123456 \
      --ecu GW-123456:gateway-v1:gw/1.0.bin:/srv/opdoc/fw/gw-1.0.bin:1 \
      --image-root /etc/depotmesh/image-root.json --director-root /etc/depotmesh/director-root.json \
      --peer /ip4/127.0.2.1/udp/4433/quic-v1/p2p/$depot_peer \
      --listen /ip4/127.0.3.1/udp/4433/quic-v1 --no-mdns \
      --region eu-north --vehicle-type tractor --home-depot depot-hamburg-1 --fleet-key $fleet_key \
      --certificate /var/lib/depotmesh/vehicle/member.json \
      --revocations /var/lib/depotmesh/vehicle/revocations.json" &&
    ct sh -c 'grep -q "^director_url" /var/lib/depotmesh/vehicle/vehicle.toml ||
      sed -i "/^primary_key_file/a director_url = \"https://127.0.1.1:8470\"\ndirector_ca = \"/etc/depotmesh/director-ca.pem\"" \
        /var/lib/depotmesh/vehicle/vehicle.toml &&
      cp /var/lib/depotmesh/vehicle/vehicle.toml /etc/depotmesh/vehicle.toml &&
      sed -i "/^ecus = /a check_interval_secs = 3" /etc/depotmesh/vehicle.toml' &&
    ct origin vehicle register --director https://127.0.1.1:8470 --director-ca /etc/depotmesh/director-ca.pem \
      --cert /srv/opdoc/ops/factory.pem --key /srv/opdoc/ops/factory.key \
      --file /var/lib/depotmesh/vehicle/registration.toml >"$root/srv/opdoc/register.out" &&
    python3 -c 'import json,sys; json.dump(json.load(sys.stdin)["membership"], sys.stdout, indent=2)' \
      <"$root/srv/opdoc/register.out" >"$root/var/lib/depotmesh/vehicle/member.json"
}
must "vehicle-peer provision, director in vehicle.toml, origin vehicle register (section 3)" vehicle_setup
vehicle_peer=$(json /var/lib/depotmesh/vehicle/member.json "d['membership']['peer']")
# A certificate 10 days from expiry instead of the registration's year: the agent renews it at
# its first check and keeps the new one in /var/lib/depotmesh/vehicle/member.json, under
# ProtectSystem=strict.
short_certificate() {
  as_origin member issue --role vehicle --peer "$vehicle_peer" --days 10 --actor root-admin \
    >"$root/var/lib/depotmesh/vehicle/member.json"
}
must "a short vehicle certificate to renew (origin member issue --days 10)" short_certificate
must "systemctl enable --now vehicle-peer" ct systemctl enable --now vehicle-peer.service
check "vehicle-peer admitted by the depot" \
  wait_for 20 journal_has vehicle-peer.service 'peer connected and admitted'
renewed() {
  journal_has vehicle-peer.service 'membership certificate renewed' || return 1
  local expires now
  expires=$(json /var/lib/depotmesh/vehicle/member.json "d['membership']['expires']")
  now=$(date +%s)
  [ "$expires" -gt $((now + 300 * 86400)) ] || { echo "member.json expires $expires"; return 1; }
}
check "the agent renewed and rewrote /var/lib/depotmesh/vehicle/member.json" wait_for 20 renewed
check "vehicle-peer sandboxed: root, NoNewPrivs, seccomp, only CHOWN DAC_* FOWNER, own mounts" \
  sandboxed vehicle-peer.service root f

# ---- A release rolled out to the vehicle (section 4, `origin assign`) ----

assign() {
  as_origin --offline-keys /srv/opdoc/usb release /srv/opdoc/fw/gw-2.0.bin --name gw/2.0.bin \
    --hardware-id gateway-v1 --release-counter 2 --delta-from gw/1.0.bin --actor alice &&
    as_origin assign --vin WDB9634031L123456 --ecu GW-123456,gateway-v1,gw/2.0.bin --actor alice
}
must "origin release gw/2.0.bin --delta-from gw/1.0.bin; origin assign" assign
check "the vehicle installed it (outcome=committed)" \
  wait_for 60 journal_has vehicle-peer.service 'outcome=committed'
check "its report accepted by the director" \
  wait_for 20 journal_has vehicle-peer.service 'report accepted by the director'
installed() {
  local ecu
  ecu=$(json /var/lib/depotmesh/vehicle/data/status.json "d['ecus']['GW-123456']")
  grep -q "'image': 'gw/2.0.bin'" <<<"$ecu" && grep -q "'slot': 'B'" <<<"$ecu" ||
    { echo "status.json: $ecu"; return 1; }
  cmp -n 4000000 "$root/srv/opdoc/fw/gw-2.0.bin" "$root/var/lib/depotmesh/vehicle/ecu-GW-123456/bank-b.img" ||
    return 1
  grep -aq 'BOOT_ORDER=B A' "$root/var/lib/depotmesh/vehicle/ecu-GW-123456/env.img" ||
    { echo "env.img: $(strings "$root/var/lib/depotmesh/vehicle/ecu-GW-123456/env.img" | tr '\n' ' ')"; return 1; }
  local report
  report=$(json /var/lib/depotmesh/vehicle/data/status.json "d['last_install']['report']")
  ct test -s "$report" || { echo "no report file $report"; return 1; }
}
# status.json is written when the check that installed ends, just after the report.
check "bank B holds gw/2.0.bin, env.img boots B, status.json and the report written" wait_for 10 installed

# ---- The sandboxes, probed ----

# probe [--no-block] UNIT COMMAND: runs COMMAND (sh) as a copy of UNIT (same user and
# hardening, oneshot), and waits for it unless --no-block.
probe() {
  local block=""
  if [ "$1" = --no-block ]; then
    block=--no-block
    shift
  fi
  local unit=$1 command=$2 name=depotmesh-probe-$1
  printf '#!/bin/sh\nset -e\n%s\n' "$command" >"$root/srv/$name.sh"
  chmod 755 "$root/srv/$name.sh"
  sed -e "s|^ExecStart=.*|ExecStart=/srv/$name.sh|" -e 's/^Type=.*/Type=oneshot/' \
    -e '/^Restart/d' -e '/^\[Install\]/,$d' "$root/lib/systemd/system/$unit" \
    >"$root/etc/systemd/system/$name"
  ct systemctl daemon-reload
  ct systemctl start ${block:+"$block"} "$name" || { journal "$name" | tail -n 15; return 1; }
}
readonly_etc='touch /etc/depotmesh/.probe 2>/tmp/err && exit 1; cat /tmp/err'
check "origin-serve's sandbox: its directory writable, /etc/depotmesh and /usr read-only" \
  probe origin-serve.service "touch /var/lib/depotmesh/origin/.probe; rm /var/lib/depotmesh/origin/.probe
    test -r /etc/depotmesh/director-ca.pem; $readonly_etc; ! touch /usr/.probe 2>/dev/null"
check "depot-cache's sandbox: reads /etc/depotmesh/*, its directory writable, /etc read-only" \
  probe depot-cache.service "cat /etc/depotmesh/depot.toml /etc/depotmesh/member.json >/dev/null
    touch /var/lib/depotmesh/depot/.probe; rm /var/lib/depotmesh/depot/.probe; $readonly_etc"
check "vehicle-peer's sandbox: /var/lib/depotmesh writable, /etc read-only even to root, /proc/cmdline, systemctl" \
  probe vehicle-peer.service "touch /var/lib/depotmesh/.probe; rm /var/lib/depotmesh/.probe
    touch /etc/depotmesh/.probe 2>/tmp/err && exit 1; grep -q 'Read-only file system' /tmp/err
    test -s /proc/cmdline; systemctl show -P Version >/dev/null"

# ---- The journal ----

plain_journal() {
  local unit escape
  escape=$(printf '\033')
  for unit in origin-serve.service origin-timestamp.service depot-cache.service vehicle-peer.service; do
    [ "$(journal "$unit" | wc -l)" -gt 0 ] || { echo "$unit logged nothing"; return 1; }
    ! journal "$unit" | grep -- "$escape" >/dev/null || { echo "$unit: ANSI escapes in the journal"; return 1; }
    ! ct journalctl --no-pager -o json -u "$unit" | grep '"MESSAGE":\[' >/dev/null ||
      { echo "$unit: binary MESSAGE fields"; return 1; }
  done
}
check "the units' journal is plain text (no ANSI escapes, no binary messages)" plain_journal
none_restarted() {
  local unit
  for unit in origin-serve.service depot-cache.service vehicle-peer.service; do
    running "$unit" || return 1
  done
  ! ct journalctl --no-pager -o cat -u origin-serve -u depot-cache -u vehicle-peer -u origin-timestamp |
    grep -E 'status=2[0-9][0-9]/|Failed at step|Failed with result'
}
check "all three still running, none restarted or failed" none_restarted

# ---- A reboot from the agent's sandbox ----

reboot_from_agent() {
  # As a gateway's `[boot] reboot_command = ["systemctl", "reboot"]`, run by vehicle-peer.
  probe --no-block vehicle-peer.service 'systemctl reboot' || return 1
  ended 60 || { echo "the container did not reboot"; return 1; }
}
must "systemctl reboot from vehicle-peer's sandbox reboots (no CAP_SYS_BOOT needed)" reboot_from_agent
must "systemd boots again" boot
after_reboot() {
  local unit
  for unit in origin-serve.service depot-cache.service vehicle-peer.service origin-timestamp.timer; do
    ct systemctl -q is-active "$unit" || { echo "$unit $(ct systemctl is-active "$unit")"; return 1; }
  done
  ct journalctl -b --no-pager -o cat -u vehicle-peer | grep 'peer connected and admitted' >/dev/null &&
    ct journalctl -b --no-pager -o cat -u depot-cache | grep 'prefetch done' >/dev/null
}
check "the enabled units started at boot; the vehicle and the depot connected again" wait_for 30 after_reboot

# ---- A stop while the vehicle's depot is unreachable ----

stops_in_time() {
  ct systemctl stop depot-cache.service || return 1
  # Checks now spend 5 s dialing the depot: a SIGTERM may come in the middle of one.
  sleep 4
  local began took result
  began=$(date +%s)
  ct systemctl stop vehicle-peer.service
  took=$(($(date +%s) - began))
  result=$(ct systemctl show -P Result vehicle-peer.service)
  echo "note: stopped in $took s (Result=$result: success on SIGTERM, timeout when killed at TimeoutStopSec)"
  [ "$took" -le 25 ] || { ct journalctl --no-pager -o cat -u vehicle-peer.service | tail -n 6; return 1; }
}
check "systemctl stop vehicle-peer with its depot down ends within 25 s (TimeoutStopSec=20)" stops_in_time

# ---- 6. Taking it down: a purge while the origin's units run ----

must "dpkg --purge the three packages" \
  ct dpkg --purge depotmesh-vehicle depotmesh-depot depotmesh-origin
purged() {
  local unit
  for unit in origin-serve.service depot-cache.service vehicle-peer.service origin-timestamp.timer; do
    ! ct systemctl -q is-active "$unit" || { echo "$unit still active"; return 1; }
  done
  ! ct find /etc/systemd/system -name 'origin-*' -o -name 'depot-cache*' -o -name 'vehicle-peer*' |
    grep . || { echo "enablement links left"; return 1; }
  ! ct test -e /usr/bin/origin || { echo "/usr/bin/origin left"; return 1; }
  local kept
  for kept in origin/image/metadata/timestamp.json depot/identity.key vehicle/primary.key; do
    ct test -s "/var/lib/depotmesh/$kept" || { echo "/var/lib/depotmesh/$kept gone"; return 1; }
  done
  ct getent passwd depotmesh-origin depotmesh-depot
}
check "the purge stopped the units, removed their enablement, kept the state and the users" purged

finish
