#!/usr/bin/env bash
# bench/compressed.sh [CORPUS_DIR] -- the image compressed (what `origin release` lists for a
# vehicle no delta applies to: a delta from the empty image) against xz and zstd on the newest
# image of every corpus pair, in one run:
#
#   bench/compressed.sh                     corpus in target/corpus (fetched when missing)
#
# For each image: ours (`origin delta --from EMPTY`, all cores), rebuilt with `vehicle-peer
# apply-delta` (every segment checked, the whole hashed) and compared with `cmp`;
# `xz -9e` single-threaded, plain and with the x86 branch filter (`--x86`); `zstd -19 --long=27
# -T0`. Prints a markdown table: size as % of the image per tool, ours / best of the others,
# wall time and peak RSS of ours and of each tool. Exits 1 if a round trip failed.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$REPO/../shared
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
CORPUS=${1:-$TARGET/corpus}
WORK=$TARGET/compressed-bench

need() { command -v "$1" >/dev/null || apt-get install -y "$2" >/dev/null; }
need xz xz-utils
need zstd zstd
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null
[ -d "$CORPUS/files" ] || "$SHARED/corpus/scripts/fetch_corpus.sh" "$CORPUS"
(cd "$REPO" && cargo build --release -q -p origin -p vehicle-peer)

mkdir -p "$WORK"
: >"$WORK/empty"
# Wall seconds and peak RSS (MiB) of a command, from /usr/bin/time.
timed() { # OUT_FILE -- command...
    local log=$1; shift
    /usr/bin/time -f '%e %M' -o "$log" "$@" >/dev/null
    awk '{printf "%.2f %.0f\n", $1, $2 / 1024}' "$log"
}
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", 100 * a / b}'; }

failed=0
echo "| image | MB | ours % | xz -9e % | xz --x86 -9e % | zstd -19 % | ours / best | ours s, MiB | xz s | xz --x86 s | zstd s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
while read -r rel; do
    image=$CORPUS/files/$rel
    name=$(basename "$rel")
    size=$(stat -c %s "$image")
    read -r ours_s ours_rss < <(timed "$WORK/t" "$TARGET/release/origin" delta \
        --from "$WORK/empty" --to "$image" --out "$WORK/$name.dm")
    rm -f "$WORK/$name.out"
    if ! "$TARGET/release/vehicle-peer" apply-delta --from "$WORK/empty" --delta "$WORK/$name.dm" \
        --out "$WORK/$name.out" >/dev/null || ! cmp -s "$image" "$WORK/$name.out"; then
        echo "round trip FAILED for $name" >&2
        failed=1
    fi
    rm -f "$WORK/$name.out"
    read -r xz_s _ < <(timed "$WORK/t" sh -c "xz -9e -T1 -c '$image' > '$WORK/$name.xz'")
    read -r x86_s _ < <(timed "$WORK/t" sh -c "xz --x86 --lzma2=preset=9e -T1 -c '$image' > '$WORK/$name.x86.xz'")
    read -r zstd_s _ < <(timed "$WORK/t" zstd -q -f -19 --long=27 -T0 "$image" -o "$WORK/$name.zst")
    ours=$(stat -c %s "$WORK/$name.dm")
    xz=$(stat -c %s "$WORK/$name.xz")
    x86=$(stat -c %s "$WORK/$name.x86.xz")
    zst=$(stat -c %s "$WORK/$name.zst")
    best=$(printf '%s\n' "$xz" "$x86" "$zst" | sort -n | head -1)
    printf '| %s | %.1f | %s | %s | %s | %s | %.3f | %s, %s | %s | %s | %s |\n' \
        "$name" "$(awk -v s="$size" 'BEGIN {print s / 1e6}')" \
        "$(pct "$ours" "$size")" "$(pct "$xz" "$size")" "$(pct "$x86" "$size")" "$(pct "$zst" "$size")" \
        "$(awk -v a="$ours" -v b="$best" 'BEGIN {print a / b}')" "$ours_s" "$ours_rss" "$xz_s" "$x86_s" "$zstd_s"
done < <(awk '{print $3}' "$SHARED/corpus/pairs.txt" | sort -u)
exit $failed
