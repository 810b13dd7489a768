#!/bin/bash
# Runs `tollgate-load compare` ROUNDS times on one scenario (bare, nginx, tollgate and a base
# build of tollgate in each round) and prints each round's CPU µs per request, the medians, and
# the ratios paired within each round. A shared machine's noise moves whole rounds (the host's
# other tenants); ratios taken within one round, and their median, are what to compare.
#
#   loadtest/rounds.sh SCENARIO BASE_BINARY [ROUNDS] [TAG]
#
# SCENARIO: a name under loadtest/scenarios/ (without .yaml). BASE_BINARY: another tollgate
# build (e.g. a worktree at the commit to compare with, `cargo build --release`, its
# target/release/tollgate copied aside). Each round's figures go to loadtest/results/ as
# <date>-<commit>-<scenario>-<TAG>-r<N>.{json,md} when TAG is given, nowhere otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
sc=$1
base=$2
rounds=${3:-5}
tag=${4:-}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq 1 "$rounds"); do
  if [ -n "$tag" ]; then
    dest=(--results-tag "$tag-r$i")
  else
    dest=(--results-dir -)
  fi
  target/release/tollgate-load compare --scenario "loadtest/scenarios/$sc.yaml" \
    --setups bare,nginx,tollgate,tollgate-base --tollgate-base "$base" \
    --requests 200000 --duration 8 --closed-only --nice -15 "${dest[@]}" 2>&1 |
    awk '/^(bare|nginx|tollgate|tollgate-base) +closed/ {printf "%s=%s ", $1, $15} END {print ""}' |
    tee -a "$out"
done
python3 - "$out" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    for kv in line.split():
        k, v = kv.split("=")
        runs[k].append(float(v))
med = {k: statistics.median(v) for k, v in runs.items()}
print("median cpu_us/req: " + "  ".join(f"{k} {v:.2f}" for k, v in med.items()))
def paired(a, b):
    r = [x / y for x, y in zip(runs[a], runs[b])]
    return " ".join(f"{x:.3f}" for x in r) + f"  (median {statistics.median(r):.3f})"
print("tollgate / bare,  per round: " + paired("tollgate", "bare"))
print("tollgate / nginx, per round: " + paired("tollgate", "nginx"))
print("tollgate / base,  per round: " + paired("tollgate", "tollgate-base"))
PY
