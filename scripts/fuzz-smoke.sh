#!/usr/bin/env bash
# Fuzzes each target (the JSON-RPC scanner against serde_json and sonic-rs, the HTTP head parsers
# + chunked decoder, the Mcp-Method/Mcp-Name check against both parsers) for SECONDS (default 20)
# each and exits non-zero on a crash.
# Installs cargo-fuzz into .tools/cargo when missing. The machine has only stable Rust, so
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z sanitizer flags.
# New inputs go to .tools/fuzz-corpus (not committed); fuzz/corpus/scanner holds the reviewed
# seeds (fuzz/corpus/<target> for each). A crash is written under fuzz/artifacts/<target>/: turn it into a named case in
# tests/scanner/cases/ before fixing it.
set -euo pipefail

secs="${1:-20}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

tools="$root/.tools/cargo"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "fuzz-smoke: installing cargo-fuzz into $tools" >&2
    cargo install --locked cargo-fuzz --root "$tools"
fi
export PATH="$tools/bin:$PATH"

for target in scanner http_head header_agreement; do
    scratch="$root/.tools/fuzz-corpus/$target"
    mkdir -p "$scratch"
    echo "fuzz-smoke: $target for ${secs}s" >&2
    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz "$target" "$scratch" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -print_final_stats=1
done
