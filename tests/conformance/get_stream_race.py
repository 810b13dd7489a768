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
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the runner's fixture start and raw HTTP helpers)


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
                sid = run.open_session(addr)
                first, second = (("GET", None), ("POST", call)) if get_first else (("POST", call), ("GET", None))
                a = run.send(addr, first[0], sid, first[1])
                run.head_of(a)
                b = run.send(addr, second[0], sid, second[1])
                run.head_of(b)
                get = a if get_first else b
                got += run.elicitation_arrives(get)
                a.close()
                b.close()
                d = run.send(addr, "DELETE", sid)
                run.head_of(d)
                d.close()
            counts[get_first] = got
            order = "GET stream opened before the call" if get_first else "GET stream opened right after the call"
            print(f"{order}: the elicitation reached it in {got} of {args.sessions} sessions", flush=True)
    finally:
        fixture.stop()
    return 0 if counts[True] == args.sessions and counts[False] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
