#!/usr/bin/env bash
# CI smoke test for the load harness: a few seconds, small N, whatever build is already there.
# Runs compare with direct + bare + tollgate + tollgate-tls + tollgate-fed3 (no nginx) on the small tools/call scenario and asserts only that
# requests completed with zero errors and that the final JSON line parses. Never a timing threshold.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-}"
if [ -z "$PROFILE" ]; then
  if [ -x target/release/tollgate-load ] && [ -x target/release/bare-forwarder ] && [ -x target/release/tollgate ]; then
    PROFILE=release
  else
    PROFILE=debug
  fi
fi
if [ "$PROFILE" = release ]; then
  cargo build -q --release --bin tollgate-load --bin bare-forwarder --bin tollgate
else
  cargo build -q --bin tollgate-load --bin bare-forwarder --bin tollgate
fi
BIN="target/$PROFILE"
SETUPS="${SETUPS:-direct,bare,tollgate,tollgate-tls,tollgate-fed3}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

# Bounded: at most 600 requests and 3 s per phase, and the whole run at most 120 s.
timeout 120 "$BIN/tollgate-load" compare \
  --scenario loadtest/scenarios/small-call.yaml \
  --setups "$SETUPS" \
  --requests 600 --duration 3 --warmup 50 --connections 4 --sessions 4 \
  --no-pin --results-dir - ${SMOKE_ARGS:-} > "$OUT/out.txt" 2>&1 || { cat "$OUT/out.txt"; echo "smoke: compare failed"; exit 1; }

tail -n 1 "$OUT/out.txt" > "$OUT/line.json"
python3 - "$OUT/line.json" "$SETUPS" <<'PY'
import json, sys
line = json.load(open(sys.argv[1]))
bad = []
for name in sys.argv[2].split(","):
    s = line["setups"].get(name)
    if s is None or "not_run" in s:
        bad.append(f"{name}: not run: {s and s.get('not_run')}")
        continue
    for phase in ("closed", "open"):
        p = s.get(phase)
        if p is None:
            bad.append(f"{name}: no {phase} phase"); continue
        if p["completed"] == 0 or p["errors_total"] != 0:
            bad.append(f"{name} {phase}: completed={p['completed']} errors={p['errors']} last={p['last_error']}")
if bad:
    print("smoke: FAILED\n  " + "\n  ".join(bad)); sys.exit(1)
print("smoke: ok (" + ", ".join(f"{n}: {line['setups'][n]['closed']['completed']}+{line['setups'][n]['open']['completed']} requests" for n in sys.argv[2].split(",")) + ")")
PY
