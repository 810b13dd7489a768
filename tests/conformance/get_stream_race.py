#!/usr/bin/env python3
"""The v0.1.16 fixture's GET-stream race, shown straight at the fixture (no gateway): run.py's
GET_STREAM_RACE says why its elicitation scenarios time out now and then through a gateway.

In each of N sessions it calls test_elicitation and opens the session's GET stream, one order or
the other, each request waiting for its answer's head before the next goes; then it waits (at most
5 s) for the tool's elicitation/create on the GET stream. Opened first, the stream gets it every
time; opened right after the call, never: the fixture's SDK stores it for a replay and the tool
call waits until its own timeout. The client of the conformance suite sends the two at the same
moment, so which one the fixture sees first decides the scenario.

Usage: python3 tests/conformance/get_stream_race.py [--sessions N]
Exits 0 when the fixture behaves as described, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the runner's fixture start)


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10)
    args = ap.parse_args()
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "test_elicitation", "arguments": {"message": "m"}}}
    workdir = Path(tempfile.mkdtemp(prefix="get-stream-race-"))
    fixture, where = run.start_fixture("v0.1.16", workdir)
    host, port = where.split(":")
    addr = (host, int(port))
    counts = {}
    try:
        for get_first in (True, False):
            got = 0
            for _ in range(args.sessions):
                sid = open_session(addr)
                first, second = (("GET", None), ("POST", call)) if get_first else (("POST", call), ("GET", None))
                a = send(addr, first[0], sid, first[1])
                head_of(a)
                b = send(addr, second[0], sid, second[1])
                head_of(b)
                get = a if get_first else b
                got += elicitation_arrives(get)
                a.close()
                b.close()
                d = send(addr, "DELETE", sid)
                head_of(d)
                d.close()
            counts[get_first] = got
            order = "GET stream opened before the call" if get_first else "GET stream opened right after the call"
            print(f"{order}: the elicitation reached it in {got} of {args.sessions} sessions", flush=True)
    finally:
        fixture.stop()
    return 0 if counts[True] == args.sessions and counts[False] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
