#!/usr/bin/env bash
# Builds the Debian packages of depotmesh from this workspace, with Debian's own tools (dpkg-deb,
# dpkg-shlibdeps, strip) and no debian/ source package:
#   depotmesh-origin   origin (image repository + director), origin-serve.service,
#                      origin-timestamp.{service,timer}, the depotmesh-origin user
#   depotmesh-depot    depot-cache, depot-cache.service, /etc/depotmesh/depot.toml, the
#                      depotmesh-depot user
#   depotmesh-vehicle  vehicle-peer, vehicle-peer.service, /etc/depotmesh/{vehicle,ecu}.toml
# Each has its binary stripped in /usr/bin, its units (config/*.service, *.timer, as they are) in
# /lib/systemd/system, its example configuration as conffiles in /etc/depotmesh, sysusers.d and
# tmpfiles.d files for its user and state directory, and the docs in /usr/share/doc/<package>.
#
#   packaging/build-debs.sh [--profile release|dev|PROFILE] [--out DIR] [--bin-dir DIR]
#                           [--compression xz|gzip|zstd|none]
#
# --profile      the Cargo profile to build and package (default release);
# --out          where the .deb files go (default: TARGET_DIR/debian); their paths are printed,
#                one a line;
# --bin-dir      package the binaries already in DIR (origin, depot-cache, vehicle-peer), as
#                they are: no cargo build (default: build the profile, TARGET_DIR/<profile>);
# --compression  of the packages' data (default xz, as Debian's archive: 27 s for the origin's
#                debug build here, gzip 3 s, for tests).
# Environment: CARGO (default cargo), CARGO_TARGET_DIR, DEBFULLNAME and DEBEMAIL (the Maintainer
# field), SOURCE_DATE_EPOCH (file dates; default: the last commit's). Needs dpkg-dev (for
# dpkg-shlibdeps) and binutils (strip). Packages for the machine's own architecture only.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
fail() {
  echo "build-debs.sh: $*" >&2
  exit 1
}

profile=release
out=""
bin_dir=""
compression=xz
while [ $# -gt 0 ]; do
  case "$1" in
  --profile) [ $# -ge 2 ] || fail "--profile needs a value"; profile=$2; shift 2 ;;
  --profile=*) profile=${1#--profile=}; shift ;;
  --out) [ $# -ge 2 ] || fail "--out needs a value"; out=$2; shift 2 ;;
  --out=*) out=${1#--out=}; shift ;;
  --bin-dir) [ $# -ge 2 ] || fail "--bin-dir needs a value"; bin_dir=$2; shift 2 ;;
  --bin-dir=*) bin_dir=${1#--bin-dir=}; shift ;;
  --compression) [ $# -ge 2 ] || fail "--compression needs a value"; compression=$2; shift 2 ;;
  --compression=*) compression=${1#--compression=}; shift ;;
  -h | --help) usage; exit 0 ;;
  *) fail "unknown argument $1 (see --help)" ;;
  esac
done

# Relative to where it was started, before the cd below.
[ -z "$out" ] || out=$(realpath -m "$out")
[ -z "$bin_dir" ] || bin_dir=$(realpath -m "$bin_dir")
root=$(cd "$(dirname "$0")/.." && pwd)
packaging=$root/packaging/debian
cd "$root"

need() { command -v "$1" >/dev/null || fail "$1 is missing: apt-get install $2"; }
need dpkg-deb dpkg
need dpkg-shlibdeps dpkg-dev
need strip binutils
need gzip gzip
cargo=${CARGO:-cargo}

# The workspace's version, as every crate has it (version.workspace = true).
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || fail "no version in Cargo.toml's [workspace.package]"
arch=$(dpkg --print-architecture)
maintainer="${DEBFULLNAME:-depotmesh maintainers} <${DEBEMAIL:-depotmesh@example.invalid}>"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
source_url=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^repository *= *"\(.*\)"/\1/p' Cargo.toml)
commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

target_dir=${CARGO_TARGET_DIR:-}
if [ -z "$target_dir" ]; then
  target_dir=$("$cargo" metadata --format-version 1 --no-deps --locked |
    grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
fi
case "$profile" in
dev | test) profile_dir=debug ;;
bench) profile_dir=release ;;
*) profile_dir=$profile ;;
esac
out=${out:-$target_dir/debian}

if [ -z "$bin_dir" ]; then
  bin_dir=$target_dir/$profile_dir
  "$cargo" build --locked --profile "$profile" \
    -p origin -p depot-cache -p vehicle-peer --bin origin --bin depot-cache --bin vehicle-peer >&2
fi
for binary in origin depot-cache vehicle-peer; do
  [ -x "$bin_dir/$binary" ] || fail "$bin_dir/$binary is missing (build it, or leave out --bin-dir)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debian" "$out"
# dpkg-shlibdeps wants to run beside a debian/control; nothing of it is read here.
: >"$work/debian/control"

# The Rust crates a binary is statically linked with (no build-time ones, no proc macros), for its
# copyright file.
bundled_crates() {
  "$cargo" tree --locked -p "$1" -e normal,no-proc-macro --prefix none --format '{p}|{l}' |
    sed -e 's/ (\*)//' -e '/ (\//d' -e 's/^\([^ ]*\) v\([^|]*\)|\(.*\)$/ \1 \2: \3/' | sort -u
}

# package NAME BINARY CRATE "UNITS" "ENABLE_UNITS" "RESTART_UNITS" "STOP_UNITS" "CONFFILES"
#   "DOCS" "EXAMPLES" EXTRA_DEPENDS SUMMARY DESCRIPTION
# CONFFILES: SOURCE:/etc/PATH:MODE, sources relative to the workspace.
package() {
  local name=$1 binary=$2 crate=$3 units=$4 enable_units=$5 restart_units=$6 stop_units=$7
  local conffiles=$8 docs=$9 examples=${10} extra_depends=${11} summary=${12} description=${13}
  local stage=$work/debian/$name doc=/usr/share/doc/$name
  mkdir -p "$stage/DEBIAN"

  install -D -m 0755 "$bin_dir/$binary" "$stage/usr/bin/$binary"
  # As dh_strip does for an executable: no symbols, no debug information, no .comment.
  strip --remove-section=.comment --remove-section=.note "$stage/usr/bin/$binary"

  local unit
  for unit in $units; do
    install -D -m 0644 "config/$unit" "$stage/lib/systemd/system/$unit"
  done
  [ ! -e "$packaging/$name.sysusers" ] ||
    install -D -m 0644 "$packaging/$name.sysusers" "$stage/usr/lib/sysusers.d/$name.conf"
  [ ! -e "$packaging/$name.tmpfiles" ] ||
    install -D -m 0644 "$packaging/$name.tmpfiles" "$stage/usr/lib/tmpfiles.d/$name.conf"

  local entry source path mode
  : >"$stage/DEBIAN/conffiles"
  for entry in $conffiles; do
    IFS=: read -r source path mode <<<"$entry"
    install -D -m "$mode" "$source" "$stage$path"
    echo "$path" >>"$stage/DEBIAN/conffiles"
  done

  # The docs keep the workspace's layout (README.md, config/README.md, docs/*.md), so that their
  # links to each other hold; they stay uncompressed for the units' Documentation=file:// links.
  for path in $docs; do
    install -D -m 0644 "$path" "$stage$doc/$path"
  done
  for path in $examples; do
    install -D -m 0644 "$path" "$stage$doc/examples/$(basename "$path")"
  done
  bundled_crates "$crate" >"$work/$name.crates"
  sed -e "s|@SOURCE@|$source_url|" -e "/^@BUNDLED_CRATES@\$/{r $work/$name.crates" -e 'd}' \
    "$packaging/copyright.in" >"$stage$doc/copyright"
  chmod 0644 "$stage$doc/copyright"
  # A native package's changelog: the version and the commit it was built from.
  {
    echo "$name ($version) unstable; urgency=medium"
    echo
    echo "  * Built from depotmesh commit $commit."
    echo
    echo " -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
  } | gzip -9n >"$stage$doc/changelog.gz"
  chmod 0644 "$stage$doc/changelog.gz"

  local script
  for script in postinst prerm postrm; do
    sed -e "s/@PACKAGE@/$name/g" -e "s/@ENABLE_UNITS@/$enable_units/g" \
      -e "s/@RESTART_UNITS@/$restart_units/g" -e "s/@STOP_UNITS@/$stop_units/g" \
      "$packaging/$script.in" >"$stage/DEBIAN/$script"
    chmod 0755 "$stage/DEBIAN/$script"
  done

  # Depends: the shared libraries the binary links (libc6, libgcc-s1), by dpkg-shlibdeps.
  local shlibs
  shlibs=$(cd "$work" && dpkg-shlibdeps -O "debian/$name/usr/bin/$binary" | sed -n 's/^shlibs:Depends=//p')
  local depends=$shlibs
  [ -z "$extra_depends" ] || depends="$depends, $extra_depends"
  # Installed-Size as dpkg-gencontrol counts it: KiB per file or link, rounded up; 1 per directory.
  local installed_size
  installed_size=$(find "$stage" -mindepth 1 -path "$stage/DEBIAN" -prune -o \
    \( -type f -o -type l \) -printf '%s\n' -o -printf '-\n' |
    awk '$1 == "-" { kib += 1; next } { kib += int(($1 + 1023) / 1024) } END { print kib }')
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $installed_size"
    echo "Depends: $depends"
    echo "Section: admin"
    echo "Priority: optional"
    echo "Description: $summary"
    echo "$description" | fold -s -w 78 | sed -e 's/ *$//' -e 's/^/ /' -e 's/^ $/ ./'
  } >"$stage/DEBIAN/control"

  find "$stage" -type d -exec chmod 0755 {} +
  local deb=$out/${name}_${version}_$arch.deb
  dpkg-deb --root-owner-group -Z"$compression" --build "$stage" "$deb" >/dev/null
  echo "$deb"
}

sysusers_depends="systemd | systemd-standalone-sysusers | systemd-sysusers"

package depotmesh-origin origin origin \
  "origin-serve.service origin-timestamp.service origin-timestamp.timer" \
  "origin-serve.service origin-timestamp.timer" \
  "origin-serve.service" \
  "origin-serve.service origin-timestamp.timer origin-timestamp.service" \
  "packaging/debian/origin-storage.env:/etc/depotmesh/origin-storage.env:0600" \
  "README.md config/README.md docs/director.md docs/security.md docs/walkthrough.md docs/architecture.md docs/operate.md config/monitoring/README.md config/monitoring/alerts.yml config/monitoring/alerts.test.yml config/monitoring/grafana/director.json config/monitoring/grafana/depots.json config/monitoring/grafana/fleet-cellular.json" \
  "config/campaign.toml config/vehicle-registration.toml" \
  "$sysusers_depends" \
  "depotmesh origin: signs OTA releases and runs the Uptane director" \
  "The cloud side of depotmesh, an over-the-air update system for vehicle fleets: the TUF/Uptane image repository and director (releases, deltas, keys, fleet membership, staged campaigns), the director service (origin serve: HTTPS API, dashboard, Prometheus metrics) and the hourly re-signing of timestamps (origin-timestamp.timer). The units are installed but not enabled: run origin init as the depotmesh-origin user first."

package depotmesh-depot depot-cache depot-cache \
  "depot-cache.service" "depot-cache.service" "depot-cache.service" "depot-cache.service" \
  "config/depot.toml:/etc/depotmesh/depot.toml:0644" \
  "README.md config/README.md docs/architecture.md docs/security.md docs/operate.md" \
  "" \
  "$sysusers_depends" \
  "depotmesh depot cache: serves OTA updates to a vehicle yard" \
  "The depot role of depotmesh, an over-the-air update system for vehicle fleets: prefetches signed releases and deltas from the origin in scheduled, rate-limited windows, serves them to the vehicles of its yard over QUIC (as their tracker, super-seeding), relays the vehicles' signed reports to the director, and exports Prometheus metrics. The unit is installed but not enabled: fill in /etc/depotmesh/depot.toml first."

package depotmesh-vehicle vehicle-peer vehicle-peer \
  "vehicle-peer.service" "vehicle-peer.service" "vehicle-peer.service" "vehicle-peer.service" \
  "config/vehicle.toml:/etc/depotmesh/vehicle.toml:0644 config/ecu.toml:/etc/depotmesh/ecu.toml:0644" \
  "README.md config/README.md docs/flasher.md docs/architecture.md docs/security.md docs/operate.md" \
  "" \
  "" \
  "depotmesh vehicle agent: fetches, verifies and installs OTA updates" \
  "The vehicle role of depotmesh, an over-the-air update system for vehicle fleets, for the vehicle's gateway: checks the director's Uptane metadata, downloads images and deltas from the depot and parked neighbours within the link policy (WiFi, cellular budget and windows), writes the ECUs' A/B or single banks with a one-try trial boot and rollback, and reports signed version manifests. The unit is installed but not enabled: fill in /etc/depotmesh/vehicle.toml and one ecu.toml per ECU first."
