"""The client checks, written once for both Python SDK generations.

A client script wraps its SDK in an adapter whose methods return plain JSON
dicts (camelCase, as on the wire); `run_checks` makes the same calls the
TypeScript client makes, from fixtures.json, and prints one line per check:
`ok NAME` or `FAIL NAME: why`. The exit code is the number of failures (capped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures.json"
# Set by run_clients.py for the clients that run the (slow) idle-pause check.
IDLE_PAUSE_ENV = "TOLLGATE_CHECK_IDLE_PAUSE"


class Adapter(Protocol):
    async def list_tools(self) -> dict: ...
    async def call_tool(self, name: str, arguments: dict, on_progress: Callable[..., Awaitable[None]] | None = None) -> dict: ...
    async def list_resources(self) -> dict: ...
    async def read_resource(self, uri: str) -> dict: ...
    async def list_prompts(self) -> dict: ...
    async def get_prompt(self, name: str, arguments: dict) -> dict: ...


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("url", help="MCP endpoint, e.g. http://127.0.0.1:PORT/mcp")
    parser.add_argument("profile", choices=[k for k in json.loads(FIXTURES.read_text()) if not k.startswith("_")], help="which fixture set the upstream serves")
    return parser.parse_args()


def load_profile(profile: str) -> dict:
    return json.loads(FIXTURES.read_text())[profile]


def describe(exc: BaseException) -> str:
    """One line for an exception, looking inside exception groups (anyio task groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().replace("\n", " | ")[:600]


def answer(fx: dict, key: str, default):
    """The fixed answer a client's `key` handler ("sampling"/"elicitation") gives: from the
    session-era check of that name, or from the input-required check (2026-07-28)."""
    spec = fx.get(key) or fx.get("input_required", {}).get(key) or {}
    return spec.get("answer", default)


def texts(result: dict) -> list[str]:
    return [c.get("text", "") for c in result.get("content", []) if c.get("type") == "text"]


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def ok(self, name: str) -> None:
        print(f"ok {name}", flush=True)

    def fail(self, name: str, why: str) -> None:
        self.failures += 1
        print(f"FAIL {name}: {why}", flush=True)

    async def check(self, name: str, body: Callable[[], Awaitable[str | None]]) -> None:
        """Run one check; `body` returns None on success or a reason string."""
        try:
            why = await body()
        except Exception as exc:  # a client error is a failed check, never a crash of the run
            why = f"raised {describe(exc)}"
        if why is None:
            self.ok(name)
        else:
            self.fail(name, why)


async def run_checks(adapter: Adapter, fx: dict, report: Report) -> None:
    async def tools_list() -> str | None:
        names = [t["name"] for t in (await adapter.list_tools()).get("tools", [])]
        missing = [n for n in fx["tool_present"] if n not in names]
        return f"missing {missing} in {names}" if missing else None

    async def tools_call() -> str | None:
        spec = fx["tool"]
        result = await adapter.call_tool(spec["name"], spec["arguments"])
        got = texts(result)
        if result.get("isError"):
            return f"isError set: {got}"
        return None if got == [spec["expect_text"]] else f"text {got!r} != [{spec['expect_text']!r}]"

    async def resources_list() -> str | None:
        uris = [r["uri"] for r in (await adapter.list_resources()).get("resources", [])]
        return None if fx["resource"]["uri"] in uris else f"{fx['resource']['uri']} not in {uris}"

    async def resources_read() -> str | None:
        spec = fx["resource"]
        contents = (await adapter.read_resource(spec["uri"])).get("contents", [])
        if len(contents) != 1:
            return f"expected one content, got {len(contents)}"
        c = contents[0]
        if c.get("uri") != spec["uri"]:
            return f"uri {c.get('uri')!r}"
        if c.get("mimeType") != spec["expect_mime"]:
            return f"mimeType {c.get('mimeType')!r} != {spec['expect_mime']!r}"
        return None if c.get("text") else "empty text"

    async def prompts_list() -> str | None:
        names = [p["name"] for p in (await adapter.list_prompts()).get("prompts", [])]
        return None if fx["prompt"]["name"] in names else f"{fx['prompt']['name']} not in {names}"

    async def prompts_get() -> str | None:
        spec = fx["prompt"]
        messages = (await adapter.get_prompt(spec["name"], spec["arguments"])).get("messages", [])
        found = [m for m in messages if m.get("role") == "user" and spec["expect_contains"] in m.get("content", {}).get("text", "")]
        return None if found else f"no user message containing {spec['expect_contains']!r} in {messages!r:.300}"

    async def progress(spec: dict = fx["progress"]) -> str | None:
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
            seen.append(progress)

        result = await adapter.call_tool(spec["name"], spec["arguments"], on_progress)
        if result.get("isError"):
            return f"isError set: {texts(result)}"
        if len(seen) < spec["min_notifications"]:
            return f"{len(seen)} progress notifications, wanted >= {spec['min_notifications']}"
        return None if seen == sorted(seen) else f"progress not increasing: {seen}"

    async def large() -> str | None:
        spec = fx["large"]
        result = await adapter.call_tool(spec["name"], spec["arguments"])
        got = texts(result)
        if result.get("isError") or len(got) != 1:
            return f"isError={result.get('isError')} with {len(got)} text blocks"
        text = got[0]
        if len(text.encode()) != spec["expect_length"]:
            return f"{len(text.encode())} bytes, wanted {spec['expect_length']}"
        pattern = spec["expect_pattern"]
        want = (pattern * (len(text) // len(pattern) + 1))[: len(text)]
        if text != want:
            at = next(i for i, (a, b) in enumerate(zip(text, want)) if a != b)
            return f"bytes differ from the demo's pattern at offset {at}: {text[at:at + 40]!r}"
        return None

    async def structured() -> str | None:
        spec = fx["structured"]
        result = await adapter.call_tool(spec["name"], spec["arguments"])
        if result.get("isError") or texts(result) != [spec["expect_text"]]:
            return f"isError={result.get('isError')} text={texts(result)!r}"
        got = result.get("structuredContent")
        return None if got == spec["expect_structured"] else f"structuredContent {got!r} != {spec['expect_structured']!r}"

    async def fail() -> str | None:
        spec = fx["fail"]
        result = await adapter.call_tool(spec["name"], spec["arguments"])
        return None if result.get("isError") is True else f"isError={result.get('isError')!r}"

    async def idle_pause() -> str | None:
        # Tool calls, a pause longer than the upstream's keep-alive idle timeout, tool calls again;
        # `parallel` at a time (see fixtures.json "idle_pause"). Every call must succeed.
        spec, pause = fx["tool"], fx["idle_pause"]

        async def calls(when: str) -> str | None:
            # Every call finishes before the check does, failed or not (none left in flight).
            calls = (adapter.call_tool(spec["name"], spec["arguments"]) for _ in range(pause["parallel"]))
            results = await asyncio.gather(*calls, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    return f"{when} the pause: raised {describe(result)}"
                if result.get("isError") or texts(result) != [spec["expect_text"]]:
                    return f"{when} the pause: isError={result.get('isError')} text={texts(result)!r}"
            return None

        before = await calls("before")
        if before is not None:
            return before
        await asyncio.sleep(pause["seconds"])
        return await calls("after")

    await report.check("tools/list", tools_list)
    await report.check(f"tools/call {fx['tool']['name']}", tools_call)
    await report.check("resources/list", resources_list)
    await report.check("resources/read", resources_read)
    await report.check("prompts/list", prompts_list)
    await report.check(f"prompts/get {fx['prompt']['name']}", prompts_get)
    await report.check(f"progress {fx['progress']['name']}", progress)
    for spec in fx.get("progress_each", []):  # progress from each upstream (mixed eras)
        await report.check(f"progress {spec['name']}", lambda spec=spec: progress(spec))
    for spec in fx.get("calls_each", []):  # a tool of each upstream (federated)
        async def call_each(spec=spec):
            result = await adapter.call_tool(spec["name"], spec["arguments"])
            got = " ".join(texts(result))
            return None if not result.get("isError") and spec["expect_contains"] in got else f"result {got[:200]!r}"
        await report.check(f"tools/call {spec['name']}", call_each)
    for uri in fx.get("resources_each", []):  # a resource of each upstream (federated)
        async def read_each(uri=uri):
            contents = (await adapter.read_resource(uri)).get("contents", [])
            return None if contents and contents[0].get("uri") == uri else f"contents {contents!r:.200}"
        await report.check(f"resources/read {uri}", read_each)
    for key in ("sampling", "elicitation"):  # the client's handler answers with fixtures' "answer"
        if key not in fx:
            continue
        if not getattr(adapter, "answers_" + key, False):
            report.ok(f"{key} {fx[key]['name']} skipped: this client has no {key} handler here")
            continue
        async def server_request(spec=fx[key]):
            result = await adapter.call_tool(spec["name"], spec["arguments"])
            got = " ".join(texts(result))
            return None if not result.get("isError") and spec["expect_contains"] in got else f"result {got[:200]!r}"
        await report.check(f"{key} {fx[key]['name']}", server_request)
    # Input-required results (2026-07-28): the handler answers, the client retries with the answer.
    for key, spec in fx.get("input_required", {}).items():
        if not getattr(adapter, "modern", False):
            report.ok(f"input_required {key} {spec['name']} skipped: a session-era client cannot answer an input-required result")
            continue
        async def input_required(spec=spec):
            result = await adapter.call_tool(spec["name"], spec["arguments"])
            got = " ".join(texts(result))
            return None if not result.get("isError") and spec["expect_contains"] in got else f"result {got[:200]!r}"
        await report.check(f"input_required {key} {spec['name']}", input_required)
    if "structured" in fx:
        await report.check(f"structuredContent {fx['structured']['name']}", structured)
    if "large" in fx:
        await report.check("large 1 MiB result", large)
    if "fail" in fx:
        await report.check("isError result", fail)
    # Once per client run, and only where the driver asks for it (it costs the pause).
    if "idle_pause" in fx and os.environ.get(IDLE_PAUSE_ENV):
        await report.check(f"tools/call {fx['tool']['name']} after {fx['idle_pause']['seconds']}s idle", idle_pause)


def main(connect: Callable[[str, dict, Report], Awaitable[None]], description: str) -> None:
    args = parse_args(description)
    report = Report()
    fx = load_profile(args.profile)
    try:
        asyncio.run(connect(args.url, fx, report))
    except BaseException as exc:  # session setup failed: report it as one check
        report.fail("session", describe(exc))
    sys.exit(min(report.failures, 100))
