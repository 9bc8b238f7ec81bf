#!/usr/bin/env bash
# ready.sh: the depot is serving once it has published its address and the blob id.
test -s "$OUT/dm/addr" && test -s "$OUT/dm/blob"
