#!/bin/bash
# Counts, per request, what the process under test asks of the kernel while tollgate-load drives
# it: the figures loadtest/README quotes from tracepoints and uprobes. Needs perf and root.
#
#   loadtest/trace.sh ops   SCENARIO [SETUP] [BINARY]   io_uring operations by opcode, syscalls
#                                                       by number, context switches
#   loadtest/trace.sh clock SCENARIO [SETUP] [BINARY]   calls of libc's __clock_gettime (the
#                                                       vDSO clock reads that go through libc)
#
# SCENARIO: a name under loadtest/scenarios/ (without .yaml). SETUP: tollgate (default), bare
# or nginx. BINARY: the tollgate build to run (default target/release/tollgate).
set -euo pipefail
cd "$(dirname "$0")/.."
what=$1
sc=$2
setup=${3:-tollgate}
bin=$(realpath "${4:-target/release/tollgate}")
run=$(mktemp)
data=$(mktemp)
trap 'rm -f "$run" "$data"' EXIT
case $setup in
  tollgate) pat="^$bin run --config" ;;
  bare) pat="bare-forwarder" ;;
  nginx) pat="nginx -p" ;;
  *) echo "setup: tollgate, bare or nginx" >&2; exit 2 ;;
esac
case $what in
  ops) events=(-e io_uring:io_uring_submit_req -e raw_syscalls:sys_enter -e sched:sched_switch) ;;
  clock)
    libc=$(ldd "$bin" | awk '/libc.so/ {print $3}')
    perf probe -q -d probe_libc:__clock_gettime 2>/dev/null || true
    perf probe -q -x "$libc" __clock_gettime
    events=(-e probe_libc:__clock_gettime)
    ;;
  *) echo "what: ops or clock" >&2; exit 2 ;;
esac
target/release/tollgate-load compare --scenario "loadtest/scenarios/$sc.yaml" --setups "$setup" \
  --tollgate "$bin" --requests 2000000 --duration 10 --closed-only --nice -15 \
  --results-dir - > "$run" 2>&1 &
load=$!
pid=""
for _ in $(seq 1 200); do
  pid=$(pgrep -f "$pat" | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.05
done
[ -n "$pid" ] || { echo "the $setup process did not start" >&2; exit 1; }
sleep 2
perf record "${events[@]}" -p "$pid" -o "$data" -- sleep 3 > /dev/null 2>&1
wait "$load"
rps=$(awk -v s="$setup" '$1 == s && $2 == "closed" {print $5; exit}' "$run")
echo "$setup: $rps req/s (the phase's average; the counts are over 3 s of it)"
perf script -i "$data" 2> /dev/null | python3 -c '
import collections, re, sys
n = float(sys.argv[1]) * 3
c = collections.Counter()
for l in sys.stdin:
    if "io_uring_submit_req" in l:
        m = re.search(r"opcode (\S+)", l)
        c["io_uring " + (m.group(1).rstrip(",") if m else "?")] += 1
    elif "sys_enter" in l:
        m = re.search(r"NR (\d+)", l)
        c[l.split()[0] + " syscall " + (m.group(1) if m else "?")] += 1
    elif "sched_switch" in l:
        c["context switch"] += 1
    elif "clock_gettime" in l:
        c["__clock_gettime"] += 1
for k, v in c.most_common():
    print("%-32s %.3f per request" % (k, v / n))
' "$rps"
