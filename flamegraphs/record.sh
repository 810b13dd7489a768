#!/usr/bin/env bash
# Record a flamegraph of the proxy under load:
#   flamegraphs/record.sh [SCENARIO]        (default: small-call; a name in loadtest/scenarios/ or a path)
# Environment:
#   TARGET=tollgate|bare      process to profile (default tollgate; bare = the bare forwarder, for a baseline)
#   SECONDS_TO_RECORD=6       perf duration (the load is bounded in requests and seconds too)
#   PERF_EVENT=cpu-clock      perf event (software clock works in VMs without PMU access)
#   CALL_GRAPH=dwarf          perf call-graph mode (release builds omit frame pointers, so dwarf by default)
# Writes flamegraphs/<date>-<commit>-<scenario>[-bare].svg. KEEP_FOLDED=1 also keeps the folded stacks beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

SCEN="${1:-small-call}"
[ -f "$SCEN" ] || SCEN="loadtest/scenarios/${SCEN%.yaml}.yaml"
[ -f "$SCEN" ] || { echo "record.sh: no scenario $SCEN"; exit 2; }
NAME="$(basename "$SCEN" .yaml)"
TARGET="${TARGET:-tollgate}"
SECS="${SECONDS_TO_RECORD:-6}"
EVENT="${PERF_EVENT:-cpu-clock}"
CG="${CALL_GRAPH:-dwarf}"

# Tools: perf (Debian linux-perf) and inferno (cargo install into .tools/cargo).
if ! command -v perf >/dev/null; then
  echo "record.sh: perf missing; installing linux-perf"
  apt-get install -y -q linux-perf >/dev/null
fi
INF="$ROOT/.tools/cargo/bin"
if [ ! -x "$INF/inferno-flamegraph" ]; then
  echo "record.sh: installing inferno into .tools/cargo"
  nice cargo install inferno --locked --root "$ROOT/.tools/cargo"
fi

echo "record.sh: building release binaries (nice)"
nice cargo build -q --release --bin tollgate --bin tollgate-load --bin bare-forwarder
BIN="$ROOT/target/release"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_file() { # file pid what
  for _ in $(seq 1 500); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { echo "record.sh: $3 exited before it was ready"; cat "$WORK"/*.log >&2 || true; return 1; }
    sleep 0.02
  done
  echo "record.sh: $3 not ready"; return 1
}
json() { python3 -c "import json,sys;print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

# Upstream on CPU 0 with the generator; the profiled proxy on CPU 1 (when there are 2+ CPUs).
PIN0=(); PIN1=()
if [ "$(nproc)" -ge 2 ]; then PIN0=(taskset -c 0); PIN1=(taskset -c 1); fi
# upstream_args: ["--tools", "1000"] → --tools 1000
UPARGS=$(sed -n 's/^upstream_args: *\[\(.*\)\]/\1/p' "$SCEN" | tr -d '",')
"${PIN0[@]}" "$BIN/tollgate" demo-upstream --listen 127.0.0.1:0 --ready-file "$WORK/up.ready" --workers 1 $UPARGS >"$WORK/up.log" 2>&1 &
UP=$!; PIDS+=("$UP")
wait_file "$WORK/up.ready" "$UP" "tollgate demo-upstream"
UPADDR=$(json "$WORK/up.ready" listen)

case "$TARGET" in
  tollgate)
    cat >"$WORK/tollgate.yaml" <<YAML
workers: 1
listen:
  address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
upstreams:
  - name: demo
    url: "http://$UPADDR/mcp"
servers:
  - path: /mcp
    upstream: demo
YAML
    "${PIN1[@]}" "$BIN/tollgate" run --config "$WORK/tollgate.yaml" --ready-file "$WORK/t.ready" >"$WORK/t.log" 2>&1 &
    T=$!; PIDS+=("$T")
    wait_file "$WORK/t.ready" "$T" "tollgate run" || { echo "record.sh: tollgate cannot run yet; try TARGET=bare"; exit 1; }
    TPID=$(json "$WORK/t.ready" pid); SUFFIX="" ;;
  bare)
    "${PIN1[@]}" "$BIN/bare-forwarder" --listen 127.0.0.1:0 --upstream "$UPADDR" --ready-file "$WORK/t.ready" >"$WORK/t.log" 2>&1 &
    T=$!; PIDS+=("$T")
    wait_file "$WORK/t.ready" "$T" "bare-forwarder"
    TPID=$T; SUFFIX="-bare" ;;
  *) echo "record.sh: TARGET must be tollgate or bare"; exit 2 ;;
esac
URL="http://$(json "$WORK/t.ready" listen)/mcp"
echo "record.sh: profiling $TARGET pid $TPID at $URL under $NAME for ${SECS}s (perf -e $EVENT --call-graph $CG)"

# Load: closed loop, bounded in requests and seconds (a little longer than the recording).
"${PIN0[@]}" "$BIN/tollgate-load" run --scenario "$SCEN" --url "$URL" --mode closed \
  --duration "$((SECS + 2))" --requests 5000000 --target-pid "$TPID" >"$WORK/load.txt" 2>&1 &
LOAD=$!; PIDS+=("$LOAD")
sleep 1
perf record -e "$EVENT" -F 999 --call-graph "$CG" -p "$TPID" -o "$WORK/perf.data" -- sleep "$SECS" 2>"$WORK/perf.err" \
  || { cat "$WORK/perf.err"; echo "record.sh: perf record failed"; exit 1; }
wait "$LOAD" || true
tail -n 3 "$WORK/load.txt" | head -n 2

DATE=$(date -u +%Y-%m-%d)
COMMIT=$(git rev-parse --short HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] || COMMIT="$COMMIT-dirty"
OUT="flamegraphs/$DATE-$COMMIT-$NAME$SUFFIX.svg"
FOLDED="$WORK/stacks.folded"
perf script -i "$WORK/perf.data" 2>/dev/null | "$INF/inferno-collapse-perf" >"$FOLDED"
[ "${KEEP_FOLDED:-0}" = 1 ] && cp "$FOLDED" "${OUT%.svg}.folded"
"$INF/inferno-flamegraph" --title "$TARGET under $NAME ($DATE $COMMIT, perf $EVENT)" <"$FOLDED" >"$OUT"
echo "record.sh: wrote $OUT ($(wc -l <"$FOLDED") unique stacks)"
