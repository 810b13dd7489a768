"""Python `mcp` 2.x (`mcp.Client(url, mode=...)`) against one MCP endpoint.

MCP_CLIENT_MODE picks the mode: "legacy" (default: the initialize handshake), "auto"
(probe `server/discover`, fall back to initialize on a legacy-only server) or "2026-07-28"
(the stateless revision only, pinned).
Usage: .tools/py-mcp2/bin/python tests/clients/python/mcp2_client.py URL demo|everything
"""

from __future__ import annotations

import os
from typing import Any

from mcp import Client, types

import checks


def as_wire(model: Any) -> dict:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


MODERN = ("2026-07-28",)  # the stateless revision: input-required results instead of server requests


class Mcp2(checks.Adapter):
    modern = False
    answers_sampling = True
    answers_elicitation = True

    def __init__(self, client: Client) -> None:
        self.client = client

    async def list_tools(self) -> dict:
        return as_wire(await self.client.list_tools())

    async def call_tool(self, name, arguments, on_progress=None) -> dict:
        return as_wire(await self.client.call_tool(name, arguments, progress_callback=on_progress))

    async def list_resources(self) -> dict:
        return as_wire(await self.client.list_resources())

    async def read_resource(self, uri) -> dict:
        return as_wire(await self.client.read_resource(uri))

    async def list_prompts(self) -> dict:
        return as_wire(await self.client.list_prompts())

    async def get_prompt(self, name, arguments) -> dict:
        return as_wire(await self.client.get_prompt(name, arguments))


async def connect(url: str, fx: dict, report: checks.Report) -> None:
    mode = os.environ.get("MCP_CLIENT_MODE", "legacy")
    async def sampling(_ctx, _params):  # fixed content; the tool's result must carry it
        answer = checks.answer(fx, "sampling", "")
        return types.CreateMessageResult(role="assistant", model="fixed", content=types.TextContent(type="text", text=answer))

    async def elicitation(_ctx, _params):
        return types.ElicitResult(action="accept", content=checks.answer(fx, "elicitation", {}))

    async with Client(url, mode=mode, read_timeout_seconds=30,
                      sampling_callback=sampling, elicitation_callback=elicitation) as client:
        report.ok(f"initialize ({client.protocol_version})")
        adapter = Mcp2(client)
        adapter.modern = client.protocol_version in MODERN
        await checks.run_checks(adapter, fx, report)


if __name__ == "__main__":
    checks.main(connect, __doc__)
