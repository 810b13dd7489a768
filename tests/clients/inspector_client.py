"""The MCP Inspector CLI (`mcp-inspector --cli URL --transport http --method ...`) against one endpoint.

Each check is one CLI process (a fresh session), as a person would run it. With
MCP_TRANSPORT=sse it passes `--transport sse` (URL is then the event stream's, e.g. .../mcp/sse).
Usage: python3 tests/clients/inspector_client.py URL demo|everything|py|federated|federated-sse|mixed   (stdlib only)
Needs `mcp-inspector` and Node 22 first on PATH (the driver sets both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures.json"
failures = 0


def inspector(url: str, *args: str) -> dict:
    exe = shutil.which("mcp-inspector")
    if exe is None:
        raise RuntimeError("mcp-inspector not on PATH (run scripts/install-tools.sh)")
    proc = subprocess.run(
        [exe, "--cli", url, "--transport", os.environ.get("MCP_TRANSPORT", "http"), *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()[:400]}")
    return json.loads(proc.stdout)


def check(name: str, body) -> None:
    global failures
    try:
        why = body()
    except Exception as exc:
        why = f"raised {type(exc).__name__}: {exc}"
    if why is None:
        print(f"ok {name}", flush=True)
    else:
        failures += 1
        print(f"FAIL {name}: {str(why).replace(chr(10), ' | ')[:600]}", flush=True)


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[2] not in ("demo", "everything", "py", "federated", "federated-sse", "mixed"):
        sys.exit("usage: inspector_client.py URL demo|everything|py|federated|federated-sse|mixed")
    url, profile = sys.argv[1], sys.argv[2]
    fx = json.loads(FIXTURES.read_text())[profile]

    def tools_list():
        names = [t["name"] for t in inspector(url, "--method", "tools/list")["tools"]]
        return None if fx["tool"]["name"] in names else f"{fx['tool']['name']} not in {names}"

    def tools_call():
        result = inspector(url, "--method", "tools/call", "--tool-name", fx["tool"]["name"], "--tool-arg", fx["inspector_tool_arg"])
        got = [c.get("text") for c in result.get("content", []) if c.get("type") == "text"]
        return None if got == [fx["inspector_expect_text"]] and not result.get("isError") else f"result {result!r:.300}"

    def resources_read():
        contents = inspector(url, "--method", "resources/read", "--uri", fx["resource"]["uri"])["contents"]
        return None if len(contents) == 1 and contents[0].get("text") else f"contents {contents!r:.300}"

    def prompts_get():
        pairs = [f"{k}={v}" for k, v in fx["prompt"]["arguments"].items()]
        messages = inspector(url, "--method", "prompts/get", "--prompt-name", fx["prompt"]["name"], "--prompt-args", *pairs)["messages"]
        found = any(fx["prompt"]["expect_contains"] in m.get("content", {}).get("text", "") for m in messages)
        return None if found else f"messages {messages!r:.300}"

    check("tools/list", tools_list)
    check(f"tools/call {fx['tool']['name']} {fx['inspector_tool_arg']}", tools_call)
    check("resources/read", resources_read)
    check(f"prompts/get {fx['prompt']['name']}", prompts_get)
    for uri in fx.get("resources_each", []):  # a resource of each upstream (federated)
        def read_each(uri=uri):
            contents = inspector(url, "--method", "resources/read", "--uri", uri)["contents"]
            return None if contents and contents[0].get("uri") == uri else f"contents {contents!r:.300}"
        check(f"resources/read {uri}", read_each)
    for key in ("sampling", "elicitation"):
        if key in fx:
            print(f"ok {key} {fx[key]['name']} skipped: the Inspector CLI cannot answer server->client requests", flush=True)
    sys.exit(min(failures, 100))


if __name__ == "__main__":
    main()
