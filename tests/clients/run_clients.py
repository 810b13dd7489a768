#!/usr/bin/env python3
"""Real MCP clients through tollgate, with the same clients straight at the upstreams as a control.

Starts, on 127.0.0.1 and ephemeral ports, each waited for through its ready file:
  - `tollgate demo-upstream` (the built-in demo MCP server),
  - @modelcontextprotocol/server-everything (pinned to loopback by lib/loopback.cjs),
  - python/py_server.py (a Python SDK mcp 1.x FastMCP server, the py-mcp1 venv),
  - the same two servers again in their legacy HTTP+SSE mode (2024-11-05: server-everything
    `sse`, py_server.py --transport sse),
  - `tollgate run` with them behind it (/mcp -> demo, /everything/mcp -> everything,
    /py/mcp -> py, /everything-sse/mcp and /py-sse/mcp -> the SSE-mode servers with
    `transport: sse`) and one federated endpoint /fed/mcp with upstreams: [demo, everything, py].
Then runs every client (Python mcp 2.x, Python mcp 1.x, TypeScript SDK 1.x and client 2.x,
Inspector CLI, and mcp 1.x, SDK 1.x and the Inspector again over the legacy HTTP+SSE transport at
<path>/sse, through tollgate only: the upstreams do not speak it, so their control is the same
client over Streamable HTTP through tollgate) against each target, first directly, then through
tollgate, and prints one line per check:
`ok CLIENT VIA UPSTREAM: CHECK` or `FAIL ...`. A check that fails through tollgate but
passes directly is the gateway's. The `federated` target exists only through tollgate (each
upstream's own target is its control); on it the clients call a tool and read a resource of
each upstream, and a client with handlers answers the sampling and elicitation requests the py
upstream sends (fixtures "sampling"/"elicitation"; a client without one prints an
`ok ... skipped: reason` line). The SSE-mode targets exist only through tollgate too (the
clients speak Streamable HTTP to tollgate, tollgate speaks HTTP+SSE to them): their control is
the same server's streamable HTTP target, with the same fixtures; and `/fed-sse/mcp` fronts
[demo, everything-sse, py-sse] (the legacy ones as federated members), checked like `federated`
(fixture "federated-sse", its control). Both eras behind one endpoint: `/mixed/mcp` fronts the
demo held to the session era (a second upstream entry, `era: session`) and the conformance suite's
head fixture (a server of the 2026-07-28 revision, started here too), with `offer_stateless:
always` (the demo asks its clients for nothing), and every client runs on it (fixture "mixed"): a
client of the stateless revision (mcp2 and client2 pinned to 2026-07-28, on this target and the
demo only, and mcp2 and client2 in auto mode) reaches the demo through the gateway's held session
and answers the head fixture's input-required results (elicitation, sampling); a session-era
client reaches the head fixture in a session and says it skips the input-required checks. Everything it
started is stopped on exit, failure or signal.

Usage: python3 tests/clients/run_clients.py [--tollgate PATH] [--only CLIENT,...] [--via direct|tollgate]
                                           [--targets TARGET,...]
Needs scripts/install-tools.sh to have run (stdlib only otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOOLS = Path(os.environ.get("TOLLGATE_TOOLS_DIR", REPO / ".tools"))
NODE_BIN = TOOLS / "node" / "node_modules" / ".bin"
NPM_DIR = TOOLS / "npm"
PY_MCP1_BIN = TOOLS / "py-mcp1" / "bin" / "python"  # runs python/py_server.py (mcp 1.x FastMCP)
EVERYTHING_JS = NPM_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
# The conformance suite's head fixture (a server of the 2026-07-28 revision), installed by
# scripts/install-tools.sh from ../shared/conformance/fixture-head; run from its own folder.
HEAD_FIXTURE_DIR = TOOLS / "confsrv-head"

READY_DEADLINE_S = 60.0  # debug build, 2 shared cores: generous, but bounded
CLIENT_TIMEOUT_S = 180.0
STOP_DEADLINE_S = 40.0  # tollgate's default shutdown.drain_timeout is 30s; past this it is SIGKILLed
GRACEFUL_STOP_S = 5.0  # with no client connected, a graceful stop should take well under this

# name -> (argv prefix, extra environment); each takes URL and PROFILE as its last two arguments
CLIENTS = {
    "mcp2": ([str(TOOLS / "py-mcp2" / "bin" / "python"), str(HERE / "python" / "mcp2_client.py")], {"MCP_CLIENT_MODE": "legacy"}),
    # mode="auto" first probes server/discover (2026-07-28): a legacy upstream must make it fall back cleanly.
    "mcp2-auto": ([str(TOOLS / "py-mcp2" / "bin" / "python"), str(HERE / "python" / "mcp2_client.py")], {"MCP_CLIENT_MODE": "auto"}),
    # Pinned to the stateless revision (no initialize at all): what the gateway serves in it.
    "mcp2-2026": ([str(TOOLS / "py-mcp2" / "bin" / "python"), str(HERE / "python" / "mcp2_client.py")], {"MCP_CLIENT_MODE": "2026-07-28"}),
    "mcp1": ([str(TOOLS / "py-mcp1" / "bin" / "python"), str(HERE / "python" / "mcp1_client.py")], {}),
    "sdk1": ([str(NODE_BIN / "node"), str(HERE / "ts" / "sdk1_client.mjs")], {}),
    # The TypeScript client 2.x in "auto" mode: the stateless revision where the server offers it
    # (the demo, directly and through tollgate), a session where it does not.
    "client2": ([str(NODE_BIN / "node"), str(HERE / "ts" / "client2_client.mjs")], {"MCP_CLIENT_MODE": "auto"}),
    # Pinned to the stateless revision, like mcp2-2026.
    "client2-2026": ([str(NODE_BIN / "node"), str(HERE / "ts" / "client2_client.mjs")], {"MCP_CLIENT_MODE": "2026-07-28"}),
    "inspector": ([sys.executable, str(HERE / "inspector_client.py")], {}),
    # The legacy HTTP+SSE transport (2024-11-05): the same clients and checks with their SSE
    # transport, at <server path>/sse. Through tollgate only: the upstreams speak Streamable HTTP
    # only, so each one's control is the same client over Streamable HTTP through tollgate.
    "mcp1-sse": ([str(TOOLS / "py-mcp1" / "bin" / "python"), str(HERE / "python" / "mcp1_client.py")], {"MCP_TRANSPORT": "sse"}),
    "sdk1-sse": ([str(NODE_BIN / "node"), str(HERE / "ts" / "sdk1_client.mjs")], {"MCP_TRANSPORT": "sse"}),
    "inspector-sse": ([sys.executable, str(HERE / "inspector_client.py")], {"MCP_TRANSPORT": "sse"}),
}
LEGACY_SSE_CLIENTS = ("mcp1-sse", "sdk1-sse", "inspector-sse")
# Clients pinned to 2026-07-28 run only where that revision is served: the demo (directly and
# through tollgate) and /mixed/mcp; the other upstreams speak sessions only.
PINNED_2026_CLIENTS = ("mcp2-2026", "client2-2026")
PINNED_2026_TARGETS = ("demo", "mixed")

# One TypeScript and one Python client also make tool calls with a pause longer than the
# upstream's keep-alive idle timeout between them (fixtures.json "idle_pause": server-everything,
# Node's 5 s). A gateway that reuses a pooled upstream connection the upstream already closed
# fails it. One pause per client run (~6 s each, directly and through tollgate), not per check.
IDLE_PAUSE_CLIENTS = ("sdk1", "mcp2")
IDLE_PAUSE_ENV = "TOLLGATE_CHECK_IDLE_PAUSE"


@dataclass
class Tally:
    passed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    # (client, upstream, check) -> {via: passed?}, to tell the gateway's failures from the rest
    by_via: dict[tuple[str, str, str], dict[str, bool]] = field(default_factory=dict)

    def record(self, client: str, via: str, target: str, check: str, passed: bool) -> None:
        check = check.split(" (")[0]  # "initialize (2025-11-25)" -> "initialize"
        self.by_via.setdefault((client, target, check), {})[via] = passed

    def gateway_only(self) -> list[str]:
        return [f"{c} {t}: {k}" for (c, t, k), v in self.by_via.items() if v.get("direct") and v.get("tollgate") is False]

    def ok(self, name: str) -> None:
        self.passed += 1
        print(f"ok   {name}", flush=True)

    def fail(self, name: str, why: str = "") -> None:
        self.failed += 1
        line = f"{name}: {why}" if why else name
        self.failures.append(line)
        print(f"FAIL {line}", flush=True)


class Service:
    """A child process we started, its logs, and what its ready file said."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None, ready_via_env: bool = False,
                 cwd: Path | None = None):
        self.name = name
        self.ready_file = workdir / f"{name}.ready.json"
        self.log_path = workdir / f"{name}.log"
        self.ready: dict | None = None
        self.started = False  # ready file seen
        if ready_via_env:
            env = {**(env or os.environ), "READY_FILE": str(self.ready_file)}
        else:
            argv = [*argv, "--ready-file", str(self.ready_file)]
        self.argv = argv
        self.log = open(self.log_path, "wb")
        # Own process group, so stopping it also stops anything it spawned.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True, cwd=cwd)

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready {self.log_tail()}".rstrip())
            try:
                self.ready = json.loads(self.ready_file.read_text())
                self.started = True
                return self.ready
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.05)  # polling interval, not synchronisation: the deadline bounds it
        raise RuntimeError(f"{self.name} not ready within {READY_DEADLINE_S:.0f}s\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM, wait up to STOP_DEADLINE_S, then SIGKILL. Returns the exit code of a graceful stop."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
                self.log.close()
                return None
        else:
            # It had already exited: still kill any leftovers in its group.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.log.close()
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            if not self.log.closed:
                self.log.flush()
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(f"    [{self.name}] {line}" for line in text)


def client_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(NPM_DIR / "node_modules" / ".bin"), str(NODE_BIN), env.get("PATH", "")])
    env["TOLLGATE_NPM_DIR"] = str(NPM_DIR)
    # The Inspector CLI keeps a catalog and storage under $HOME: keep them in the scratch folder.
    env["HOME"] = str(workdir / "home")
    env["MCP_CATALOG_PATH"] = str(workdir / "home" / "mcp.json")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["NO_COLOR"] = "1"
    return env


def run_client(tally: Tally, client: str, via: str, target: str, url: str, env: dict[str, str]) -> None:
    label = f"{client} {via} {target}"
    if client in PINNED_2026_CLIENTS and target not in PINNED_2026_TARGETS:
        print(f"     [{label}] none: the upstream does not serve 2026-07-28 (pinned clients run on {', '.join(PINNED_2026_TARGETS)})", flush=True)
        return
    if client in LEGACY_SSE_CLIENTS:
        if via == "direct":
            print(f"     [{label}] none: the upstreams do not speak HTTP+SSE (control: {client[:-4]} through tollgate)", flush=True)
            return
        url = f"{url}/sse"
    try:
        argv, extra_env = CLIENTS[client]
        if client in IDLE_PAUSE_CLIENTS:
            extra_env = {**extra_env, IDLE_PAUSE_ENV: "1"}  # the fixture decides which upstreams
        proc = subprocess.run([*argv, url, PROFILE.get(target, target)], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=CLIENT_TIMEOUT_S, env={**env, **extra_env}, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        tally.fail(label, f"timed out after {CLIENT_TIMEOUT_S:.0f}s; output so far: {(exc.stdout or '')!s:.400}")
        return
    reported_failure = False
    for line in proc.stdout.splitlines():
        if line.startswith("ok "):
            tally.ok(f"{label}: {line[3:]}")
            tally.record(client, via, target, line[3:], True)
        elif line.startswith("FAIL "):
            reported_failure = True
            tally.fail(f"{label}: {line[5:]}")
            tally.record(client, via, target, line[5:].split(": ")[0], False)
        elif line.strip():
            print(f"     [{label}] {line}", flush=True)
    if proc.returncode != 0 and not reported_failure:
        tally.fail(label, f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}")
    elif proc.returncode != 0 and proc.stderr.strip():
        for line in proc.stderr.strip().splitlines()[-8:]:
            print(f"     [{label} stderr] {line}", flush=True)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


SERVER_PATHS = {"demo": "/mcp", "everything": "/everything/mcp", "py": "/py/mcp", "federated": "/fed/mcp",
                "everything-sse": "/everything-sse/mcp", "py-sse": "/py-sse/mcp", "federated-sse": "/fed-sse/mcp",
                "mixed": "/mixed/mcp"}
TARGETS = ("demo", "everything", "py", "federated", "everything-sse", "py-sse", "federated-sse", "mixed")
FEDERATED = ("demo", "everything", "py")  # upstreams behind /fed/mcp, in this order
TOLLGATE_ONLY = {"federated", "everything-sse", "py-sse", "federated-sse", "mixed"}  # no direct URL: the control is another target
FEDERATED_SSE = ("demo", "everything-sse", "py-sse")  # upstreams behind /fed-sse/mcp (the legacy ones as members)
LEGACY_SSE = {"everything-sse", "py-sse"}  # upstreams reached with transport: sse (URL: their /sse)
PROFILE = {"everything-sse": "everything", "py-sse": "py"}  # fixture set of a target (default: its name)
# /mixed/mcp: both eras behind one endpoint. The demo again, as upstream demo-session held to the
# session era (era: session, names prefixed demo), and the head fixture (of the 2026-07-28
# revision; its era learned by the gateway's probe).
MIXED = ("demo", "head")


def write_config(path: Path, upstreams: dict[str, str]) -> None:
    """The minimal tollgate config: each upstream (name -> host:port) behind its server path."""
    lines = ["# written by tests/clients/run_clients.py",
             "listen: { address: 127.0.0.1:0 }",
             "admin: { address: 127.0.0.1:0 }",
             "upstreams:"]
    lines += [f'  - {{ name: {name}, url: "http://{addr}/sse", transport: sse }}' if name in LEGACY_SSE
              else f'  - {{ name: {name}, url: "http://{addr}/mcp" }}' for name, addr in upstreams.items()]
    if all(name in upstreams for name in MIXED):
        lines.append(f'  - {{ name: demo-session, url: "http://{upstreams["demo"]}/mcp", era: session, prefix: demo }}')
    lines.append("servers:")
    lines += [f"  - {{ path: {SERVER_PATHS[name]}, upstream: {name} }}" for name in upstreams if name in SERVER_PATHS]
    if all(name in upstreams for name in MIXED):
        # offer_stateless: always: the demo asks its clients for nothing, so clients that ask for
        # sampling and elicitation lose nothing in 2026-07-28 there, and the head fixture's
        # input-required results reach them only in it.
        lines.append(f"  - {{ path: {SERVER_PATHS['mixed']}, upstreams: [demo-session, head], offer_stateless: always }}")
    fed = [name for name in FEDERATED if name in upstreams]
    if fed:
        lines.append(f"  - {{ path: {SERVER_PATHS['federated']}, upstreams: [{', '.join(fed)}] }}")
    fed_sse = [name for name in FEDERATED_SSE if name in upstreams]
    if any(name in LEGACY_SSE for name in fed_sse):
        lines.append(f"  - {{ path: {SERVER_PATHS['federated-sse']}, upstreams: [{', '.join(fed_sse)}] }}")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    parser.add_argument("--tollgate", default=str(target_dir / "debug" / "tollgate"), help="tollgate binary (default: the debug build)")
    parser.add_argument("--only", default=",".join(CLIENTS), help=f"comma-separated clients (default: all of {','.join(CLIENTS)})")
    parser.add_argument("--via", choices=["direct", "tollgate", "both"], default="both")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets (development; default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, config, ready files)")
    args = parser.parse_args()
    clients = [c for c in args.only.split(",") if c]
    unknown = [c for c in clients if c not in CLIENTS]
    if unknown:
        parser.error(f"unknown clients {unknown}")

    # Turn SIGTERM/SIGINT/SIGHUP into an exception so the finally block stops every child.
    def on_signal(signum, _frame):
        print(f"run_clients: interrupted by signal {signum}; stopping what it started", flush=True)
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    tally = Tally()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-clients-"))
    (workdir / "home").mkdir()
    env = client_env(workdir)
    services: list[Service] = []
    urls: dict[tuple[str, str], str] = {}  # (via, target) -> MCP URL
    gateway: Service | None = None
    try:
        # Upstreams first, then the gateway in front of them.
        if not Path(args.tollgate).exists():
            tally.fail("start demo-upstream", f"{args.tollgate} missing (cargo build --bins first)")
        else:
            demo = Service("demo-upstream", [args.tollgate, "demo-upstream", "--listen", "127.0.0.1:0"], workdir, env=env)
            services.append(demo)
        everything = Service("server-everything", [str(NODE_BIN / "node"), "--require", str(HERE / "lib" / "loopback.cjs"),
                                                   str(EVERYTHING_JS), "streamableHttp"], workdir, env=env, ready_via_env=True)
        services.append(everything)
        py_server = Service("py-server", [str(PY_MCP1_BIN), str(HERE / "python" / "py_server.py")], workdir, env=env)
        services.append(py_server)
        if args.via != "direct":
            services.append(Service("server-everything-sse", [str(NODE_BIN / "node"), "--require", str(HERE / "lib" / "loopback.cjs"),
                                                               str(EVERYTHING_JS), "sse"], workdir, env=env, ready_via_env=True))
            services.append(Service("py-server-sse", [str(PY_MCP1_BIN), str(HERE / "python" / "py_server.py"), "--transport", "sse"],
                                    workdir, env=env))
        if args.via != "direct":
            # tsx runs the server in a child process: the preload goes there through NODE_OPTIONS.
            head_env = {**env, "PORT": "0", "NODE_OPTIONS": f"--require {HERE / 'lib' / 'loopback.cjs'}"}
            services.append(Service("head-fixture", [str(NODE_BIN / "node"), "node_modules/tsx/dist/cli.mjs", "everything-server.ts"], workdir,
                                    env=head_env, ready_via_env=True, cwd=HEAD_FIXTURE_DIR))
        for svc in list(services):
            try:
                ready = svc.wait_ready()
                tally.ok(f"start {svc.name} ({ready['listen']})")
                target = {"demo-upstream": "demo", "server-everything": "everything", "py-server": "py",
                          "server-everything-sse": "everything-sse", "py-server-sse": "py-sse", "head-fixture": "head"}[svc.name]
                urls[("upstream", target)] = ready["listen"]
                if target not in TOLLGATE_ONLY and target in SERVER_PATHS:
                    urls[("direct", target)] = f"http://{ready['listen']}/mcp"
            except Exception as exc:
                tally.fail(f"start {svc.name}", str(exc))

        # Put tollgate in front of whichever upstreams came up, so one broken upstream
        # does not hide what the gateway does with the other.
        upstreams = {t: urls[("upstream", t)] for t in (*TARGETS, "head") if ("upstream", t) in urls}
        if args.via != "direct" and upstreams:
            config = workdir / "tollgate.yaml"
            write_config(config, upstreams)
            gateway = Service("tollgate", [args.tollgate, "run", "--config", str(config)], workdir, env=env)
            services.append(gateway)
            try:
                ready = gateway.wait_ready()
                tally.ok(f"start tollgate (listen {ready['listen']}, admin {ready['admin']})")
                extra = [*(["federated"] if any(t in FEDERATED for t in upstreams) else []),
                         *(["federated-sse"] if any(t in LEGACY_SSE for t in upstreams) else []),
                         *(["mixed"] if all(t in upstreams for t in MIXED) else [])]
                for target in [*(t for t in upstreams if t in SERVER_PATHS), *extra]:
                    urls[("tollgate", target)] = f"http://{ready['listen']}{SERVER_PATHS[target]}"
                for path in ("/healthz", "/readyz", "/metrics"):
                    status, body = http_get(f"http://{ready['admin']}{path}")
                    if status == 200 and (path != "/metrics" or "# TYPE" in body):
                        tally.ok(f"tollgate admin {path}")
                    else:
                        tally.fail(f"tollgate admin {path}", f"status {status}, body {body[:200]!r}")
            except Exception as exc:
                tally.fail("start tollgate", str(exc))
        elif args.via != "direct":
            tally.fail("start tollgate", "skipped: no upstream started")

        vias = ["direct", "tollgate"] if args.via == "both" else [args.via]
        for via in vias:
            for target in [t for t in TARGETS if t in args.targets.split(",")]:
                if via == "direct" and target in TOLLGATE_ONLY:
                    print(f"---- direct -> {target}: none (reachable only through tollgate)", flush=True)
                    continue
                url = urls.get((via, target))
                if url is None:
                    tally.fail(f"{via} {target}", "not reachable: every client check skipped")
                    continue
                print(f"---- {via} -> {target} ({url})", flush=True)
                for client in clients:
                    run_client(tally, client, via, target, url, env)

        if gateway is not None and gateway.started:
            # Every client has disconnected by now, so nothing is in flight: a graceful stop is quick.
            began = time.monotonic()
            code = gateway.stop()
            took = time.monotonic() - began
            if code == 0:
                tally.ok(f"tollgate exits 0 on SIGTERM ({took:.1f}s)")
            else:
                tally.fail("tollgate exits 0 on SIGTERM", f"exit {code} after {took:.1f}s (None = killed after {STOP_DEADLINE_S:.0f}s)")
            if took < GRACEFUL_STOP_S:
                tally.ok(f"tollgate stops within {GRACEFUL_STOP_S:.0f}s of SIGTERM with no client connected")
            else:
                tally.fail(f"tollgate stops within {GRACEFUL_STOP_S:.0f}s of SIGTERM with no client connected", f"took {took:.1f}s")
    finally:
        for svc in reversed(services):
            svc.stop()
        if tally.failed:
            # The gateway's log, and the log of any service that did not start.
            for svc in services:
                if svc is not gateway and svc.started:
                    continue
                tail = svc.log_tail()
                if tail:
                    print(f"---- last lines of {svc.name} log:\n{tail}", flush=True)
        if args.keep or os.environ.get("TOLLGATE_KEEP_SCRATCH"):
            print(f"scratch folder kept: {workdir}")
        else:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)

    if tally.failures:
        print("failed checks:")
        for line in tally.failures:
            print(f"  - {line.splitlines()[0][:300]}")
        gateway_only = tally.gateway_only()
        if gateway_only:
            print(f"{len(gateway_only)} of them pass straight at the upstream and fail only through tollgate (the gateway's):")
            for line in gateway_only:
                print(f"  - {line}")
    print(f"clients: {tally.passed} passed, {tally.failed} failed", flush=True)
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
