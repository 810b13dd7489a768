#!/usr/bin/env python3
"""The official MCP conformance suite through tollgate, compared check by check with the same
suite straight at the same fixture.

Starts, on 127.0.0.1 and ephemeral ports: the suite's server fixtures (installed into .tools/confsrv
from ../shared/conformance/fixture-v0.1.16 and into .tools/confsrv-head from fixture-head by
scripts/install-tools.sh), and tollgate from each checked-in config in front of them
(config/conformance.yaml: the fixture alone behind /mcp; and config/conformance-federated.yaml:
the fixture, unprefixed, and the built-in demo behind the same endpoint), with the fixture's port
substituted in a derived copy. Then runs (RUNS below)

  - @modelcontextprotocol/conformance 0.1.16, all active scenarios (v0.1.16 fixture, both configs),
  - 0.2.0-alpha.12 with --requirements 2025-11-25 (v0.1.16 fixture, both configs), and
  - 0.2.0-alpha.12 with --requirements 2026-07-28 (head fixture, config/conformance.yaml),

directly against the fixture and through each gateway, reads every check's result (`-o`), and
fails if a check that passes directly does not pass through tollgate, unless
tests/conformance/baseline.json lists it (run label, scenario, check) with a reason.

Races of the fixture: some scenarios have the fixture send a request to the client on the
session's GET stream, which its SDK drops when the stream is not open yet (the client opens it
and calls the tool at the same moment; see GET_STREAM_RACE). A scenario that fails (directly or
through tollgate) is run once more on its own; its second result counts, and the report says so.
One of GET_STREAM_RACE's scenarios that failed the race's way (its tool call timed out) is run up
to RACE_RERUNS times; it passes only if one of them passes.

Through a gateway a re-run of GET_STREAM_RACE's scenarios needs evidence that the request was never
the gateway's to deliver (a re-run could otherwise hide a gateway that loses server->client
requests part of the time). The gateways the runner starts log a debug line for every
server->client request they relay, on any stream (target tollgate::server_requests, turned on
with RUST_LOG; src/mcp/relay/watch.rs), with the session's hash as the access lines show it.
Each failed run of such a scenario through a gateway is run again only if all of these hold:
  - it failed by timing out (`looks_like_get_stream_race`), or reported nothing at all;
  - the gateway's log since that run began has a tools/call access line of the scenario's tool
    (RACE_TOOLS; waited for up to TRAIL_WAIT_S: it is written when the call ends);
  - the trail names none of the sessions that made that call: no request relayed, and no stream
    of theirs the trail stopped watching.
Otherwise the failure stands (the report's note says why) and counts as a regression if the check
passes directly. Straight at the fixture there is no gateway to hide a loss: the rule above is
all. Before the suites the runner proves the trail can say "relayed" (`check_trail`: through each
gateway in front of the v0.1.16 fixture, a session opens its GET stream first, calls
test_elicitation, gets the elicitation; the trail must name that call's session), so a trail that
is silent for another reason is never read as evidence.

Usage: python3 tests/conformance/run.py [--tollgate PATH] [--keep] [--only LABEL-PART]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOOLS = Path(os.environ.get("TOLLGATE_TOOLS_DIR", REPO / ".tools"))
NODE = TOOLS / "node" / "node_modules" / ".bin" / "node"
SHARED = REPO.parent / "shared" / "conformance"
FIXTURES = {
    # name: installed fixture (scripts/install-tools.sh copies them from ../shared/conformance)
    "v0.1.16": TOOLS / "confsrv",
    "head": TOOLS / "confsrv-head",
}
ALPHA = TOOLS / "conformance-alpha" / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
RUNS = [
    # (label, the suite's CLI, extra arguments, fixture, gateway configs in front of it)
    ("0.1.16", TOOLS / "npm" / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js", [],
     "v0.1.16", ["config/conformance.yaml", "config/conformance-federated.yaml"]),
    ("0.2.0-alpha.12 --requirements 2025-11-25", ALPHA, ["--requirements", "2025-11-25"],
     "v0.1.16", ["config/conformance.yaml", "config/conformance-federated.yaml"]),
    # The stateless revision, through the single-upstream endpoint and the federated one.
    ("0.2.0-alpha.12 --requirements 2026-07-28", ALPHA, ["--requirements", "2026-07-28"],
     "head", ["config/conformance.yaml", "config/conformance-federated.yaml"]),
]
# The fixture's port as written in the checked-in configs.
FIXTURE_PLACEHOLDER = "127.0.0.1:3100"
READY_DEADLINE_S = 60.0
SUITE_TIMEOUT_S = 900.0
SCENARIO_TIMEOUT_S = 150.0
# The scenarios whose tool (in the v0.1.16 fixture) sends its sampling or elicitation request
# with `mcpServer.server.request()`, which the fixture's SDK (1.27.1) puts on the session's GET
# stream, not on the tool call's own SSE reply (the 2025-11-25 transport says requests related
# to a client request SHOULD go on that request's stream; the head fixture's tools use
# `sendRequest`, which does). The client opens its GET stream and calls the tool at once; when
# the tool call reaches the fixture first, the request is stored for a replay nobody asks for
# (a new GET has no Last-Event-ID) and the tool call waits until the suite gives up: a timeout.
# Straight at the fixture the client's two requests arrive in the order it wrote them (the GET
# about a millisecond first); a gateway passes each on its own connection and core, so the
# order the fixture sees is not always the client's (measured with a debug build: 4 of 30 runs
# of tools-call-elicitation through config/conformance.yaml idle, 1 of 30 under two busy loops;
# 0 of 60 directly). A client that opens the GET after the call loses the request every time
# straight at the fixture, with no gateway in between: get_stream_race.py shows it.
# 0.2.0-alpha.12 (--spec-version 2025-11-25, the same fixture) fails the same way: its
# tools-call-elicitation and elicitation-sep1330-enums, 20 runs each per target, debug build,
# idle: 3 of 40 through config/conformance.yaml, 2 of 40 federated, 0 of 40 directly; under two
# busy loops: 2 of 40, 1 of 40, 0 of 40. Every one of those 8 timed out with no server->client
# request in the gateway's trail for its session (the evidence below holds), and in every one
# the tool call had reached the gateway before the GET (the access lines' start times); every
# one of the 152 passing runs through a gateway had its request in the trail. In the whole
# suite (its scenarios run at once) more often: 6 runs of this label, 5 of the 24 race-prone
# scenario runs through config/conformance.yaml timed out (each with the evidence), 0 of 24
# federated, 0 of 24 directly.
GET_STREAM_RACE = {
    "v0.1.16": {"tools-call-elicitation", "tools-call-sampling", "elicitation-sep1034-defaults",
                "elicitation-sep1330-enums"},
}
# How often such a scenario is run again, on its own, after a failure that looks like the race.
RACE_RERUNS = 4
# The tool each of them calls: its tools/call access line names the session to look at.
RACE_TOOLS = {"tools-call-elicitation": "test_elicitation", "tools-call-sampling": "test_sampling",
              "elicitation-sep1034-defaults": "test_elicitation_sep1034_defaults",
              "elicitation-sep1330-enums": "test_elicitation_sep1330_enums"}
# The gateway's debug trail of the server->client requests it relays (src/mcp/relay/watch.rs),
# on for the gateways the runner starts; with the access lines it is the evidence for a re-run.
TRAIL_TARGET = "tollgate::server_requests"
TRAIL_LINE = re.compile(r"server-to-client requests? (relayed|no longer watched on this stream) session=([0-9a-f]{16})")
ACCESS_CALL = re.compile(r"\baccess: .*\brpc=tools/call name=(\S+) .*\bsession=([0-9a-f]{16})")
# How long the runner waits for a failed call's access line (written when the call ends: the
# client left, or the fixture's own request timeout).
TRAIL_WAIT_S = 20.0


class Proc:
    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, cwd=cwd, start_new_session=True)

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def size(self) -> int:
        """Bytes of the log so far: a mark to read what comes after (`since`)."""
        if not self.log.closed:
            self.log.flush()
        return self.log_path.stat().st_size

    def since(self, mark: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self.log.close()


def wait_for(what: str, cond, proc: Proc):
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}) before {what}:\n{proc.text()[-2000:]}")
        time.sleep(0.05)  # polling interval; the deadline bounds it
    raise RuntimeError(f"{proc.name}: no {what} within {READY_DEADLINE_S:.0f}s:\n{proc.text()[-2000:]}")


def start_fixture(name: str, workdir: Path) -> tuple[Proc, str]:
    env = dict(os.environ)
    env["PORT"] = "0"
    env["NODE_OPTIONS"] = f"-r {SHARED / 'loopback-port.cjs'}"
    p = Proc(f"fixture-{name}", [str(NODE), "node_modules/tsx/dist/cli.mjs", "everything-server.ts"], workdir,
             env=env, cwd=FIXTURES[name])

    def listening():
        m = re.search(r"LISTENING (127\.0\.0\.1:\d+)", p.text())
        return m.group(1) if m else None
    return p, wait_for("LISTENING line", listening, p)


def start_gateway(tollgate: str, config: str, fixture: str, workdir: Path, tag: str) -> tuple[Proc, str]:
    name = f"{Path(config).stem}-{tag}"
    text = (REPO / config).read_text()
    if FIXTURE_PLACEHOLDER not in text:
        raise RuntimeError(f"{config} does not name the fixture as {FIXTURE_PLACEHOLDER}")
    text = text.replace(FIXTURE_PLACEHOLDER, fixture)
    text = re.sub(r"(?m)^(\s*address:\s*)127\.0\.0\.1:\d+\s*$", r"\g<1>127.0.0.1:0", text, count=1)
    derived = workdir / f"{name}.yaml"
    derived.write_text(text)
    ready = workdir / f"{name}.ready.json"
    env = dict(os.environ)
    env["RUST_LOG"] = f"{env.get('RUST_LOG') or 'info'},{TRAIL_TARGET}=debug"
    p = Proc(name, [tollgate, "run", "--config", str(derived), "--ready-file", str(ready)], workdir, env=env)

    def is_ready():
        try:
            return json.loads(ready.read_text())["listen"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None
    return p, wait_for("ready file", is_ready, p)


def run_suite(cli: Path, extra: list[str], url: str, out: Path, scenario: str | None = None,
              messages: dict[tuple[str, str], str] | None = None) -> dict[tuple[str, str], str]:
    """Runs the suite (or one scenario) and returns {(scenario, check id): status}; fills
    `messages` with the failed checks' error messages."""
    if out.exists():
        shutil.rmtree(out)
    if scenario:
        # One scenario: a requirement set cannot be combined with --scenario (it fixes the
        # scenarios itself); --spec-version runs the scenario at the same revision.
        extra = ["--spec-version" if a == "--requirements" else a for a in extra]
    argv = [str(NODE), str(cli), "server", "--url", url, "-o", str(out), *extra]
    if scenario:
        argv += ["--scenario", scenario]
    log = out.parent / (out.name + ".log")
    with open(log, "wb") as f:
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                           timeout=SCENARIO_TIMEOUT_S if scenario else SUITE_TIMEOUT_S, cwd=out.parent)
        except subprocess.TimeoutExpired:
            pass  # whatever results were written count; missing ones are failures
    results: dict[tuple[str, str], str] = {}
    if not out.exists():
        return results
    for checks in sorted(out.glob("*/checks.json")):
        # Directory: <kind>-<scenario>-<ISO timestamp>
        m = re.match(r"^server-(.+)-\d{4}-\d\d-\d\dT", checks.parent.name)
        scen = m.group(1) if m else checks.parent.name
        try:
            for c in json.loads(checks.read_text()):
                results[(scen, c["id"])] = c.get("status", "?")
                if messages is not None and not passed(c.get("status", "?")):
                    messages[(scen, c["id"])] = str(c.get("errorMessage") or "")
        except (json.JSONDecodeError, KeyError, TypeError):
            results[(scen, "(unreadable checks.json)")] = "FAILURE"
    return results


def send(addr: tuple[str, int], method: str, sid: str | None = None, body: dict | None = None) -> socket.socket:
    s = socket.create_connection(addr, timeout=10)
    lines = [f"{method} /mcp HTTP/1.1", f"host: {addr[0]}:{addr[1]}",
             "accept: application/json, text/event-stream", "mcp-protocol-version: 2025-11-25"]
    data = b""
    if sid:
        lines.append(f"mcp-session-id: {sid}")
    if body is not None:
        data = json.dumps(body).encode()
        lines += ["content-type: application/json", f"content-length: {len(data)}"]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    return s


def head_of(s: socket.socket) -> str:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\r\n\r\n", 1)[0].decode(errors="replace")


def open_session(addr: tuple[str, int]) -> str:
    s = send(addr, "POST", body={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}},
        "clientInfo": {"name": "get-stream-race", "version": "1"}}})
    head = head_of(s)
    s.close()
    sid = next(l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("mcp-session-id:"))
    s = send(addr, "POST", sid, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    head_of(s)
    s.close()
    return sid


def elicitation_arrives(get: socket.socket, bound_s: float = 5.0) -> bool:
    get.settimeout(0.2)
    seen = b""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            chunk = get.recv(4096)
        except socket.timeout:
            continue
        if not chunk:
            return False
        seen += chunk
        if b'"elicitation/create"' in seen:
            return True
    return False


def passed(status: str) -> bool:
    return status in ("SUCCESS", "INFO", "WARNING", "SKIPPED")


def relayed_in(log: str, tool: str) -> tuple[set[str], dict[str, str]]:
    """In a gateway's log: the sessions (access-line hashes) that called `tool`, and those of
    them the gateway's trail says it relayed a server->client request in (or stopped watching
    a stream of: that is not evidence of nothing relayed), with what it says."""
    sessions = {m.group(2) for m in ACCESS_CALL.finditer(log) if m.group(1) == tool}
    relayed = {m.group(2): m.group(1) for m in TRAIL_LINE.finditer(log) if m.group(2) in sessions}
    return sessions, relayed


def race_evidence(gateway: Proc, mark: int, scen: str) -> tuple[bool, str]:
    """Whether the gateway's log since `mark` (one run of the suite) shows that the request of
    `scen` (a GET_STREAM_RACE scenario that timed out through it) was never the gateway's to
    deliver: its tools/call went through and the gateway relayed no server->client request on
    any stream of that session. Waits (bounded) for the call's access line."""
    tool = RACE_TOOLS.get(scen)
    if tool is None:
        return False, "the runner knows no tool of it to look for"
    deadline = time.monotonic() + TRAIL_WAIT_S
    while True:
        sessions, relayed = relayed_in(gateway.since(mark), tool)
        if sessions or time.monotonic() >= deadline:
            break
        time.sleep(0.1)  # polling interval; the deadline bounds it
    if not sessions:
        return False, f"the gateway logged no tools/call of {tool} within {TRAIL_WAIT_S:.0f}s"
    if relayed:
        said = ", ".join(f"{h} ({how})" for h, how in sorted(relayed.items()))
        return False, f"the gateway's trail names the session(s) that called {tool}: {said}"
    return True, f"the gateway relayed no server->client request in the session(s) that called {tool}: {', '.join(sorted(sessions))}"


def check_trail(url: str, gateway: Proc) -> str | None:
    """The evidence has to be able to say "relayed": through the gateway, a session opens its GET
    stream first, then calls test_elicitation; the elicitation must reach the stream and the
    gateway's log must name that call's session in both its access line and its trail."""
    host, port = url.split("/")[2].rsplit(":", 1)
    addr = (host, int(port))
    mark = gateway.size()
    sid = open_session(addr)
    get = send(addr, "GET", sid)
    head_of(get)
    call = send(addr, "POST", sid, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                    "params": {"name": "test_elicitation", "arguments": {"message": "trail"}}})
    arrived = elicitation_arrives(get, 10.0)
    call.close()
    get.close()
    end = send(addr, "DELETE", sid)
    head_of(end)
    end.close()
    if not arrived:
        return "no elicitation/create reached a GET stream opened before the call"
    ok, why = race_evidence(gateway, mark, "tools-call-elicitation")
    if ok or "relayed)" not in why:
        return f"the gateway's trail of server->client requests misses a relayed elicitation: {why}"
    return None


def looks_like_get_stream_race(scen: str, res: dict, messages: dict) -> bool:
    """Whether every failed check of `scen` is a timeout (the suite's scenario timeout, or the
    tool call's request timing out), the way GET_STREAM_RACE's scenarios fail; a wrong answer
    is not."""
    failed = [k for k, v in res.items() if k[0] == scen and not passed(v)]
    return bool(failed) and all(k[1] == "scenario-timeout" or "timed out" in messages.get(k, "") for k in failed)


def retry_failed(cli: Path, extra: list[str], url: str, res: dict, workdir: Path, tag: str, notes: list[str],
                 expected: set[str] | None = None, racy: set[str] = frozenset(),
                 gate: tuple[Proc, int, dict] | None = None) -> None:
    """Runs each scenario with a failed check once more on its own; its results replace the first.
    A scenario of `expected` (the scenarios the direct run reported) that reported nothing at all
    (it hung until the suite moved on) counts as failed too. A scenario of `racy`
    (GET_STREAM_RACE) is run again up to RACE_RERUNS times while it keeps failing by timing out.

    `gate` (through a gateway: the gateway, its log's mark before the run that gave `res`, and
    that run's failure messages) holds a `racy` scenario to the evidence rule: it is run again,
    each time, only if it failed by timing out (or reported nothing) and `race_evidence` finds
    that the gateway relayed no server->client request in its session; otherwise its failure
    stands. Without `gate` (straight at the fixture) the rule above is all."""
    failed = {s for (s, _), st in res.items() if not passed(st)}
    if expected:
        failed |= expected - {s for (s, _) in res}
    failed = sorted(failed)
    for scen in failed:
        runs, ok, race, again = 0, False, False, None
        gated = gate is not None and scen in racy
        mark, messages = (gate[1], gate[2]) if gate else (0, {})
        held = ""
        while True:
            if gated:
                hung = not any(k[0] == scen for k in res)
                if not hung and not looks_like_get_stream_race(scen, res, messages):
                    held = "it did not fail by timing out"
                    break
                evident, why = race_evidence(gate[0], mark, scen)
                if not evident:
                    held = why
                    break
                notes.append(f"{tag}: {scen} failed by timing out ({'run ' + str(runs) if runs else 'in the suite run'}): {why}")
                mark = gate[0].size()
            runs += 1
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{tag}-retry{runs}-{scen}")
            messages = {}
            again = run_suite(cli, extra, url, workdir / safe, scenario=scen, messages=messages)
            if not again:
                break  # nothing reported: the first results stand
            before = {k: v for k, v in res.items() if k[0] == scen}
            for k in before:
                res.pop(k)
            res.update(again)
            ok = all(passed(v) for v in again.values())
            race = scen in racy and not ok and looks_like_get_stream_race(scen, again, messages)
            if ok or not race or runs >= RACE_RERUNS:
                break
        if held:
            # The evidence rule: the failure stands (it is reported as any failure is).
            notes.append(f"{tag}: {scen} failed{' on run ' + str(runs) if runs else ''} and is not run again: {held}")
            continue
        if runs == 1 and not again:
            continue
        how = "passed" if ok else "failed again"
        if scen in racy and (runs > 1 or race):
            # GET_STREAM_RACE: say how many runs it took, or that every one timed out.
            how += f" on run {runs} of up to {RACE_RERUNS} (the fixture's GET-stream race)"
        notes.append(f"{tag}: {scen} failed, run again on its own: {how}")


def check_federated_listing(gateway_url: str) -> str | None:
    """Through the federated config: the fixture's tools keep their names and the demo's are
    listed beside them, prefixed."""
    def post(body: dict, sid: str | None) -> tuple[dict, str | None]:
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if sid:
            headers["mcp-session-id"] = sid
            headers["mcp-protocol-version"] = "2025-06-18"
        req = urllib.request.Request(gateway_url, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=20) as r:
            text = r.read().decode()
            sid_out = r.headers.get("mcp-session-id")
        if text.startswith("{"):
            return json.loads(text), sid_out
        for line in text.splitlines():
            if line.startswith("data: {"):
                return json.loads(line[6:]), sid_out
        return {}, sid_out
    init, sid = post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "conformance-runner", "version": "1"}}}, None)
    if not sid:
        return f"initialize gave no session: {init}"
    post({"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
    names: list[str] = []
    cursor = None
    for _ in range(50):
        params = {"cursor": cursor} if cursor else {}
        r, _ = post({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": params}, sid)
        names += [t["name"] for t in r.get("result", {}).get("tools", [])]
        cursor = r.get("result", {}).get("nextCursor")
        if not cursor:
            break
    missing = [n for n in ("test_simple_text", "demo__echo", "demo__add") if n not in names]
    return f"tools/list lacks {missing} (has {names[:12]}...)" if missing else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    parser.add_argument("--tollgate", default=str(target_dir / "debug" / "tollgate"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--only", help="run only the runs whose label contains this (development)")
    args = parser.parse_args()
    global RUNS
    if args.only:
        RUNS = [r for r in RUNS if args.only in r[0]]

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    problems: list[str] = []
    for need in ([NODE, SHARED / "loopback-port.cjs", Path(args.tollgate)] + [f / "node_modules" / "tsx" for f in FIXTURES.values()]
                 + [r[1] for r in RUNS]):
        if not Path(need).exists():
            problems.append(f"missing {need} (scripts/install-tools.sh installs the tools; ../shared must be beside the repository)")
    if problems:
        for p in problems:
            print(f"conformance: {p}")
        return 1
    baseline = json.loads((HERE / "baseline.json").read_text())
    # An exception names its run (the label above), scenario and check, with the reason.
    # An exception may also name the config it holds for (otherwise: every config of its run).
    allowed = {(e["run"], e.get("config"), e["scenario"], e["check"]) for e in baseline.get("exceptions", [])}

    def excused(label: str, cfg: str, key: tuple[str, str]) -> bool:
        return (label, cfg, *key) in allowed or (label, None, *key) in allowed

    workdir = Path(tempfile.mkdtemp(prefix="tollgate-conformance-"))
    procs: list[Proc] = []
    regressions: list[str] = []
    notes: list[str] = []
    summary: list[str] = []
    try:
        fixtures: dict[str, str] = {}
        gateways: dict[tuple[str, str], str] = {}  # (fixture, config) -> endpoint URL
        gateway_procs: dict[tuple[str, str], Proc] = {}
        for fx in sorted({r[3] for r in RUNS}):
            proc, addr = start_fixture(fx, workdir)
            procs.append(proc)
            fixtures[fx] = addr
            for cfg in sorted({c for r in RUNS if r[3] == fx for c in r[4]}):
                gw, listen = start_gateway(args.tollgate, cfg, addr, workdir, fx)
                procs.append(gw)
                gateways[(fx, cfg)] = f"http://{listen}/mcp"
                gateway_procs[(fx, cfg)] = gw
        print("; ".join(f"fixture {f} at {a}" for f, a in fixtures.items()) + "; "
              + "; ".join(f"{c} ({f}) at {u}" for (f, c), u in gateways.items()), flush=True)

        fed = gateways.get(("v0.1.16", "config/conformance-federated.yaml"))
        why = fed and check_federated_listing(fed)
        if why:
            regressions.append(f"federated listing: {why}")
        elif fed:
            print("ok   federated: the fixture's tools keep their names, the demo's are listed beside them (demo__echo)", flush=True)

        # The evidence for GET_STREAM_RACE's re-runs must be able to say "relayed".
        for (fx, cfg), url in gateways.items():
            if GET_STREAM_RACE.get(fx):
                why = check_trail(url, gateway_procs[(fx, cfg)])
                if why:
                    regressions.append(f"{cfg} ({fx}): {why}")
                else:
                    print(f"ok   {cfg} ({fx}): the gateway's trail names a relayed elicitation's session", flush=True)

        for i, (label, cli, extra, fx, configs) in enumerate(RUNS):
            direct_url = f"http://{fixtures[fx]}/mcp"
            direct = run_suite(cli, extra, direct_url, workdir / f"s{i}-direct")
            racy = GET_STREAM_RACE.get(fx, set())
            retry_failed(cli, extra, direct_url, direct, workdir, f"[{label}] direct", notes, racy=racy)
            d_ok = sum(passed(v) for v in direct.values())
            summary.append(f"[{label}] direct ({fx} fixture): {d_ok} passed, {len(direct) - d_ok} failed")
            if not direct:
                regressions.append(f"[{label}] the suite produced no results directly (see {workdir})")
            for cfg in configs:
                url = gateways[(fx, cfg)]
                gw = gateway_procs[(fx, cfg)]
                mark, messages = gw.size(), {}
                through = run_suite(cli, extra, url, workdir / f"s{i}-{Path(cfg).stem}", messages=messages)
                retry_failed(cli, extra, url, through, workdir, f"[{label}] {cfg}", notes,
                             expected={s for (s, _) in direct}, racy=racy, gate=(gw, mark, messages))
                t_ok = sum(passed(v) for v in through.values())
                lost = sorted(k for k, v in direct.items() if passed(v) and not passed(through.get(k, "MISSING")))
                gained = sorted(k for k, v in through.items() if passed(v) and not passed(direct.get(k, "MISSING")))
                base = [k for k in lost if excused(label, cfg, k)]
                lost = [k for k in lost if not excused(label, cfg, k)]
                summary.append(f"[{label}] through {cfg}: {t_ok} passed, {len(through) - t_ok} failed; "
                               f"{len(lost)} regressions, {len(base)} baselined, {len(gained)} passing only through tollgate")
                for s_, c in lost:
                    regressions.append(f"[{label}] {cfg}: {s_} / {c}: passes directly, {through.get((s_, c), 'MISSING')} through tollgate")
                for s_, c in gained:
                    notes.append(f"[{label}] {cfg}: {s_} / {c} passes through tollgate only (directly: {direct.get((s_, c), 'MISSING')})")
    except RuntimeError as exc:
        regressions.append(str(exc))
    finally:
        for p in reversed(procs):
            p.stop()
        if regressions:
            for p in procs:
                if not p.name.startswith("fixture"):
                    tail = "\n".join(p.text().splitlines()[-20:]) if p.log_path.exists() else ""
                    print(f"---- last lines of {p.name}:\n{tail}")
        if args.keep or regressions:
            print(f"scratch folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for line in notes:
        print(f"note {line}")
    for line in summary:
        print(line)
    for line in regressions:
        print(f"FAIL {line}")
    print(f"conformance: {len(regressions)} regression(s)")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
