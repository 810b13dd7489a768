"""A Python SDK (mcp 1.x FastMCP) MCP server for the federated client checks.

Streamable HTTP with stateful sessions on 127.0.0.1 and a port the OS picks (the socket is
bound here and handed to uvicorn, so no port race). Once uvicorn serves, writes the ready file
given by --ready-file: {"listen": "127.0.0.1:PORT"}.

Tools: greet_py (text), progress_py (progress notifications, needs a progressToken),
sample_py (asks the client to sample and returns the sampled text), elicit_py (asks the client
for a value and returns action and content). Resource py://info, prompt greet_prompt_py.
"""

import argparse
import asyncio
import json
import os
import socket

import uvicorn
from pydantic import BaseModel
from mcp.server.fastmcp import Context, FastMCP
from mcp.types import SamplingMessage, TextContent

mcp = FastMCP("py-server", stateless_http=False)


@mcp.tool()
def greet_py(name: str) -> str:
    """Greets by name."""
    return f"hello {name} from py"


@mcp.tool()
async def progress_py(steps: int, ctx: Context) -> str:
    """Reports `steps` progress notifications, then answers."""
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps, f"step {i}")
        await asyncio.sleep(0.01)
    return f"progress done after {steps} steps"


@mcp.tool()
async def sample_py(prompt: str, ctx: Context) -> str:
    """Sends sampling/createMessage to the client and returns what it sampled."""
    result = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=50,
    )
    text = result.content.text if isinstance(result.content, TextContent) else str(result.content)
    return f"sampled: {text}"


class Answer(BaseModel):
    answer: str


@mcp.tool()
async def elicit_py(question: str, ctx: Context) -> str:
    """Sends elicitation/create to the client and returns its action and answer."""
    result = await ctx.elicit(message=question, schema=Answer)
    data = result.data.answer if result.action == "accept" and result.data else ""
    return f"elicited: {result.action} {data}"


@mcp.resource("py://info", mime_type="text/plain")
def info() -> str:
    """What this server is."""
    return "py-server info: a Python SDK upstream"


@mcp.prompt()
def greet_prompt_py(name: str) -> str:
    """A greeting prompt."""
    return f"Please greet {name} (py prompt)."


async def serve(ready_file: str | None, transport: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # "sse": the 2024-11-05 HTTP+SSE transport (GET /sse, POST /messages/), for tollgate's
    # `transport: sse` upstreams; the same tools as the streamable HTTP mode (the control).
    app = mcp.sse_app() if transport == "sse" else mcp.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.02)
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"listen": f"127.0.0.1:{port}"}, f)
        os.replace(tmp, ready_file)
    await task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-file", default=os.environ.get("READY_FILE"))
    parser.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    args = parser.parse_args()
    asyncio.run(serve(args.ready_file, args.transport))


if __name__ == "__main__":
    main()
