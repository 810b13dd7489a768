#!/usr/bin/env bash
# THE test command: every test of the repo, in order, failing fast with one clear message.
#   1. tools      scripts/install-tools.sh (Node 22, MCP clients and servers, into .tools/)
#   2. build      cargo build --bins
#   3. cargo      cargo test --all-targets (unit, integration, benches in test mode)
#   4. hostile    cargo test --release --test hostile (the hostile regression suite against the
#                 release binary, on io_uring and legacy: framing, exhaustion, scanner, sessions,
#                 host_origin, upstream, shutdown; classes described in tests/hostile.rs)
#   5. doctests   cargo test --doc
#   6. clients    tests/clients/run_clients.py (real MCP clients, directly and through tollgate)
#   7. conformance tests/conformance/run.py (the official conformance suite, 0.1.16 and
#                 0.2.0-alpha.12 --requirements 2025-11-25, straight at its fixture and through
#                 tollgate: the fixture alone, and federated beside the built-in demo; and
#                 --requirements 2026-07-28 at the head fixture, alone and federated; check by check)
#   8. fuzz       scripts/fuzz-smoke.sh 20   (each fuzz target, bounded)
#   9. load       loadtest/smoke.sh          (a few seconds of tollgate-load: direct, bare, tollgate, federated)
# Ends with `tests: N passed, M failed` (N, M count steps); exits non-zero on any failure.
# Works with CI=true and no TTY, from a fresh clone. Usage: scripts/test.sh [--keep-going]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

keep_going=false
[[ "${1:-}" == "--keep-going" ]] && keep_going=true

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
[[ -n "${CI:-}" ]] && export CARGO_TERM_PROGRESS_WHEN=never
export PYTHONDONTWRITEBYTECODE=1
# Rust tests that want the suite's clients/servers find them here (Node 22 first on PATH).
export TOLLGATE_TOOLS_DIR="$repo/.tools"

child=
on_signal() {
  echo "test.sh: interrupted by $1" >&2
  if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  exit 130
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT
trap 'on_signal SIGHUP' HUP

passed=0
failed=0
failed_steps=()
suite_start=$SECONDS

summary() {
  echo
  if ((${#failed_steps[@]})); then
    echo "failed steps: ${failed_steps[*]}"
  fi
  echo "total time: $((SECONDS - suite_start))s"
  echo "tests: $passed passed, $failed failed"
}

# step NAME COMMAND...: run one step, timed, with a banner; stop the suite on failure.
step() {
  local name="$1"
  shift
  local start=$SECONDS rc=0
  echo
  echo "==== [$name] $*"
  # In the background + wait, so a SIGTERM/SIGINT to this script reaches the step (trap below),
  # and the client driver stops the servers it started.
  "$@" </dev/null &
  child=$!
  wait "$child" || rc=$?
  child=
  if ((rc == 0)); then
    passed=$((passed + 1))
    echo "==== [$name] ok ($((SECONDS - start))s)"
  else
    failed=$((failed + 1))
    failed_steps+=("$name")
    echo "==== [$name] FAILED with exit $rc after $((SECONDS - start))s: $(describe "$name")"
    if ! $keep_going; then
      summary
      exit 1
    fi
  fi
}

describe() {
  case "$1" in
    tools) echo "could not install the test tools (see install-tools output above)" ;;
    build) echo "the crate does not build" ;;
    cargo) echo "a Rust unit/integration/bench-as-test failed (search above for 'FAILED' or 'panicked')" ;;
    hostile) echo "a hostile regression case failed on the release binary (test names read class::case::driver; each panic lists every broken expectation; classes in tests/hostile.rs)" ;;
    doctests) echo "a doc test failed" ;;
    clients) echo "a real MCP client check failed (lines starting with FAIL above; 'direct' = the client or upstream, 'tollgate' only = the gateway)" ;;
    conformance) echo "a conformance check that passes straight at the fixture failed through tollgate (lines starting with FAIL above; tests/conformance/baseline.json lists allowed exceptions)" ;;
    fuzz) echo "the fuzz smoke run failed or found a crash" ;;
    load) echo "the load smoke test failed" ;;
    *) echo "see output above" ;;
  esac
}

echo "tollgate test suite: $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(uname -m), $(nproc) cores, CI=${CI:-}"

step tools bash scripts/install-tools.sh
export PATH="$repo/.tools/node/node_modules/.bin:$PATH"
step build nice cargo build --bins
step cargo nice cargo test --all-targets
step hostile nice cargo test --release --test hostile
step doctests nice cargo test --doc
step clients python3 tests/clients/run_clients.py
step conformance python3 tests/conformance/run.py

step fuzz bash scripts/fuzz-smoke.sh 20
step load bash loadtest/smoke.sh

summary
((failed == 0))
