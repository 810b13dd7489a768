#!/bin/bash
# Counts, per request, what the process under test asks of the kernel while tollgate-load drives
# it: the figures loadtest/README quotes from tracepoints and uprobes. Needs perf and root.
#
#   loadtest/trace.sh ops   SCENARIO [SETUP] [BINARY]   io_uring operations by opcode, poll
#                                                       arms (a receive that found no data),
#                                                       syscalls by number, context switches
#   loadtest/trace.sh clock SCENARIO [SETUP] [BINARY]   calls of libc's __clock_gettime (the
#                                                       vDSO clock reads that go through libc)
#   loadtest/trace.sh kernel SCENARIO [SETUP] [BINARY]  CPU per request split into kernel and
#                                                       user time (a 15 kHz profile), the 15
#                                                       kernel symbols taking most of it, the file
#                                                       lookups per operation (fget, fdget, ...),
#                                                       and TCP segments sent per request (nstat)
#   loadtest/trace.sh user  SCENARIO [SETUP] [BINARY]   the 25 user-space symbols (libc included)
#                                                       that take the most of the process's CPU
#                                                       (a 15 kHz profile, shares of the whole
#                                                       process, kernel included)
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
  ops) events=(-e io_uring:io_uring_submit_req -e io_uring:io_uring_poll_arm -e raw_syscalls:sys_enter -e sched:sched_switch) ;;
  kernel | user) events=(-F 15000) ;;
  clock)
    libc=$(ldd "$bin" | awk '/libc.so/ {print $3}')
    perf probe -q -d probe_libc:__clock_gettime 2>/dev/null || true
    perf probe -q -x "$libc" __clock_gettime
    events=(-e probe_libc:__clock_gettime)
    ;;
  *) echo "what: ops, clock, kernel or user" >&2; exit 2 ;;
esac
[ "$what" = kernel ] && nstat -n > /dev/null
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
if [ "$what" = user ]; then
  cpu=$(awk -v s="$setup" '$1 == s && $2 == "closed" {print $15; exit}' "$run")
  echo "$setup: $cpu µs of CPU per request; the user-space symbols taking most of the process:"
  perf report -i "$data" --no-children --sort sym -q 2> /dev/null | grep -F '[.]' | head -25
  exit 0
fi
if [ "$what" = kernel ]; then
  # nstat counts the whole run (the warm-up too) on the whole machine: the generator and the
  # upstream send their share of the segments, alike for every setup.
  reqs=$(awk -v s="$setup" '$1 == s && $2 == "closed" {print $3; exit}' "$run")
  segs=$(nstat | awk '$1 == "TcpOutSegs" {print $2}')
  cpu=$(awk -v s="$setup" '$1 == s && $2 == "closed" {print $15; exit}' "$run")
  echo "$setup: $cpu µs of CPU per request; TCP segments sent per request (all processes): $(python3 -c "print(round($segs / $reqs, 3))")"
  perf report -i "$data" --no-children --sort dso -q 2> /dev/null | python3 -c '
import sys
cpu = float(sys.argv[1]); k = u = 0.0
for l in sys.stdin:
    f = l.split()
    if len(f) < 2: continue
    share = float(f[0].rstrip("%"))
    if "kernel" in f[1]: k += share
    else: u += share
print("kernel %.2f µs, user %.2f µs per request (%.1f %% / %.1f %% of the process)" % (cpu * k / 100, cpu * u / 100, k, u))
' "$cpu"
  echo "the kernel symbols taking most of the process:"
  perf report -i "$data" --no-children --sort sym -q 2> /dev/null | grep -F '[k]' | head -15
  echo "file lookups (share of the process):"
  perf report -i "$data" --no-children --sort sym -q 2> /dev/null |
    grep -E "\] (fget|fput|fdget|fdget_pos|io_file_get_normal|io_file_get_fixed)$" || echo "  none"
  exit 0
fi
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
    elif "io_uring_poll_arm" in l:
        c["io_uring poll arm (receive found no data)"] += 1
    elif "sched_switch" in l:
        c["context switch"] += 1
    elif "clock_gettime" in l:
        c["__clock_gettime"] += 1
for k, v in c.most_common():
    print("%-32s %.3f per request" % (k, v / n))
' "$rps"
