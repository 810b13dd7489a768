"""Python `mcp` 1.x (`streamablehttp_client` + `ClientSession`) against one MCP endpoint.
With MCP_TRANSPORT=sse it speaks the legacy HTTP+SSE transport instead (`sse_client`; URL is
then the event stream's, e.g. http://HOST/mcp/sse).

Usage: .tools/py-mcp1/bin/python tests/clients/python/mcp1_client.py URL demo|everything
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from typing import Any

from mcp import ClientSession, types

# `streamablehttp_client` is deprecated in late 1.x, but it is what most 1.x code in the
# wild calls, so it is the one worth testing.
warnings.simplefilter("ignore", DeprecationWarning)
from mcp.client.sse import sse_client  # noqa: E402
from mcp.client.streamable_http import streamablehttp_client  # noqa: E402

import checks  # noqa: E402


def as_wire(model: Any) -> dict:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


class Mcp1(checks.Adapter):
    answers_sampling = True
    answers_elicitation = True

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def list_tools(self) -> dict:
        return as_wire(await self.session.list_tools())

    async def call_tool(self, name, arguments, on_progress=None) -> dict:
        return as_wire(await self.session.call_tool(name, arguments, progress_callback=on_progress))

    async def list_resources(self) -> dict:
        return as_wire(await self.session.list_resources())

    async def read_resource(self, uri) -> dict:
        return as_wire(await self.session.read_resource(uri))

    async def list_prompts(self) -> dict:
        return as_wire(await self.session.list_prompts())

    async def get_prompt(self, name, arguments) -> dict:
        return as_wire(await self.session.get_prompt(name, arguments))


async def connect(url: str, fx: dict, report: checks.Report) -> None:
    async def sampling(_ctx, _params):  # fixed content; the tool's result must carry it
        answer = fx.get("sampling", {}).get("answer", "")
        return types.CreateMessageResult(role="assistant", model="fixed", content=types.TextContent(type="text", text=answer))

    async def elicitation(_ctx, _params):
        return types.ElicitResult(action="accept", content=fx.get("elicitation", {}).get("answer", {}))

    if os.environ.get("MCP_TRANSPORT") == "sse":
        transport = sse_client(url, timeout=30)
    else:
        transport = streamablehttp_client(url, timeout=30)
    async with transport as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=30),
                                 sampling_callback=sampling, elicitation_callback=elicitation) as session:
            init = await session.initialize()
            report.ok(f"initialize ({init.protocolVersion})")
            await checks.run_checks(Mcp1(session), fx, report)


if __name__ == "__main__":
    checks.main(connect, __doc__)
