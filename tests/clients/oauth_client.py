"""The official Python SDK (mcp 2.x) as an OAuth client of an MCP endpoint, the way the MCP
authorization spec has it: its first request gets a 401 whose `WWW-Authenticate` names the
protected resource metadata (RFC 9728); the SDK reads it, discovers the authorization server
named there (RFC 8414 / OpenID discovery), registers itself (RFC 7591), runs the authorization
code flow with PKCE and a resource indicator (RFC 8707), and retries with the token. Then it lists
and calls tools.

The "browser" is an HTTP client: the redirect handler follows the authorization URL through the
test authorization server (tests/auth/as.mjs, which logs its test user in and consents without a
form) until the redirect back to our redirect URI, whose code and state the callback handler
returns. Nothing listens on the redirect URI: the redirect is caught before it is followed.

Usage (the mcp 2.x venv):
  .tools/py-mcp2/bin/python tests/clients/oauth_client.py --url http://127.0.0.1:PORT/mcp
      [--tool echo] [--arguments '{"text": "hi"}'] [--expect-tool NAME ...]
      the endpoint (tollgate) must answer 401 with resource_metadata naming an authorization
      server as.mjs runs (started by whoever started the gateway, with --resource URL).
  .tools/py-mcp2/bin/python tests/clients/oauth_client.py --selftest
      no gateway: starts as.mjs and, as the protected endpoint, the SDK's own MCP server with its
      resource-server support (PRM and the 401 from the SDK, tokens verified with PyJWT against
      the AS's JWKS), then runs the flow against it and checks who the server saw.
Prints `ok CHECK` / `FAIL CHECK` lines; exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

REPO = Path(__file__).resolve().parents[2]
# Never contacted: the redirect to it is caught (a loopback URI, as a native client registers).
REDIRECT_URI = "http://127.0.0.1:47001/callback"


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class _Redirected(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _StopAtRedirectUri(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (urllib's hook)
        if newurl.startswith(REDIRECT_URI):
            raise _Redirected(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Browser:
    """Follows the authorization URL with cookies (the AS keeps its interaction state in them)
    until the AS redirects to REDIRECT_URI; the callback then hands over code, state and iss."""

    def __init__(self) -> None:
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), _StopAtRedirectUri())
        self.result: AuthorizationCodeResult | None = None
        self.visited: list[str] = []

    def _follow(self, url: str) -> str:
        self.visited.append(url)
        try:
            with self.opener.open(url, timeout=10) as resp:
                raise RuntimeError(f"the authorization server answered {resp.status} without redirecting back: {resp.read()[:300]!r}")
        except _Redirected as r:
            return r.url
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"authorization failed: HTTP {e.code}: {e.read()[:300]!r}") from None

    async def redirect_handler(self, authorization_url: str) -> None:
        back = await asyncio.to_thread(self._follow, authorization_url)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(back).query)
        if "error" in query:
            raise RuntimeError(f"authorization refused: {query}")
        one = lambda k: query[k][0] if k in query else None  # noqa: E731
        self.result = AuthorizationCodeResult(code=one("code") or "", state=one("state"), iss=one("iss"))

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self.result is not None, "redirect_handler ran first"
        return self.result


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, what: str, ok: bool, detail: Any = "") -> None:
        print(f"{'ok' if ok else 'FAIL'} {what}{'' if ok or detail == '' else f': {detail}'}", flush=True)
        if not ok:
            self.failed += 1


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def run_flow(
    url: str, report: Report, tool: str, arguments: dict, expect_tools: list[str], mode: str | None = None
) -> dict:
    """The whole flow against `url`; returns what the caller may check further (tool results,
    the token response, the pages the browser visited)."""
    storage = MemoryStorage()
    browser = Browser()
    oauth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="tollgate oauth_client.py",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        ),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    out: dict[str, Any] = {"browser": browser, "storage": storage}
    async with httpx2.AsyncClient(auth=oauth, timeout=30) as http:
        modes = {"mode": mode} if mode else {}
        async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=30, **modes) as client:
            tools = [t.name for t in (await client.list_tools()).tools]
            report.check("tools/list", bool(tools), tools)
            report.check(f"a token after the first request ({client.protocol_version})", storage.tokens is not None)
            report.check("registered dynamically", storage.client_info is not None and bool(storage.client_info.client_id))
            auth_url = browser.visited[0] if browser.visited else ""
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(auth_url).query)
            report.check("authorization request with PKCE S256", q.get("code_challenge_method") == ["S256"], auth_url)
            report.check("authorization request names the resource", q.get("resource") == [url], q.get("resource"))
            for name in expect_tools:
                report.check(f"tools/list has {name}", name in tools, tools)
            if tool:
                result = await client.call_tool(tool, arguments)
                report.check(f"tools/call {tool}", not result.is_error, text_of(result))
                out["call"] = text_of(result)
    return out


# -- the self test: as.mjs plus the SDK's own resource server standing in for the gateway ----------


def _standin_server(sock: socket.socket, resource: str, issuer: str, jwks_uri: str) -> None:
    """The SDK's MCPServer as an OAuth resource server on `sock` (its thread's own event loop)."""
    import jwt  # PyJWT, in the mcp 2.x venv
    import uvicorn
    from mcp.server.auth.middleware.auth_context import get_access_token
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver import MCPServer

    keys = jwt.PyJWKClient(jwks_uri)

    class JwtVerifier:
        async def verify_token(self, token: str) -> AccessToken | None:
            try:
                key = await asyncio.to_thread(keys.get_signing_key_from_jwt, token)
                claims = jwt.decode(token, key, algorithms=["RS256", "ES256"], audience=resource, issuer=issuer)
            except jwt.PyJWTError as e:
                print(f"stand-in: token refused: {e}", file=sys.stderr)
                return None
            return AccessToken(
                token=token,
                client_id=claims["client_id"],
                scopes=claims.get("scope", "").split(),
                expires_at=claims["exp"],
                resource=claims["aud"],
                subject=claims["sub"],
                claims=claims,
            )

    server = MCPServer(
        "oauth-standin",
        token_verifier=JwtVerifier(),
        auth=AuthSettings(
            issuer_url=issuer,
            resource_server_url=resource,
            required_scopes=["mcp:tools"],
            validate_token_resource=True,
        ),
    )

    @server.tool()
    def whoami() -> str:
        """The subject and roles of the caller's token."""
        token = get_access_token()
        claims = token.claims or {}
        return json.dumps({"sub": claims.get("sub"), "roles": claims.get("roles"), "aud": claims.get("aud")})

    @server.tool()
    def echo(text: str) -> str:
        """Echoes text."""
        return text

    config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


def selftest() -> int:
    sys.path.insert(0, str(REPO / "tests" / "auth"))
    from tokens import AuthServer  # noqa: E402 (tests/auth/tokens.py)

    report = Report()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    resource = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    elsewhere = "http://127.0.0.1:1/elsewhere"
    with AuthServer.start([resource, elsewhere]) as auth:
        threading.Thread(
            target=_standin_server, args=(sock, resource, auth.issuer, auth.jwks_uri), daemon=True
        ).start()
        # The stand-in's 401 carries resource_metadata and the PRM names the AS. (Its socket
        # listens already: this request waits in the backlog until the server runs, no polling.)
        req = urllib.request.Request(resource, data=b"{}", headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=30)
            status, challenge = 200, ""
        except urllib.error.HTTPError as e:
            status, challenge = e.code, e.headers.get("WWW-Authenticate", "")
        report.check("unauthenticated request: 401 with resource_metadata", status == 401 and "resource_metadata=" in challenge, challenge)

        # The stand-in's verifier can refuse: a real token for another audience gets 401 too.
        def status_with(token: str) -> int:
            r = urllib.request.Request(
                resource,
                data=b"{}",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            try:
                return urllib.request.urlopen(r, timeout=5).status
            except urllib.error.HTTPError as e:
                return e.code

        wrong = auth.client_credentials("reader-bot", elsewhere, "mcp:tools")
        report.check("a token for another audience: 401", status_with(wrong) == 401)
        right = auth.client_credentials("reader-bot", resource, "mcp:tools")
        report.check("a token for this resource passes the verifier", status_with(right) != 401)

        for mode in ("legacy", "2026-07-28"):
            print(f"# mode {mode}", flush=True)
            out = asyncio.run(run_flow(resource, report, "whoami", {}, ["whoami", "echo"], mode))
            seen = json.loads(out.get("call") or "{}")
            report.check(
                "the resource server saw the logged-in user's token",
                seen == {"sub": "alice", "roles": ["reader"], "aud": resource},
                seen,
            )
            token = out["storage"].tokens
            report.check(
                "the token was issued for mcp:tools",
                token is not None and "mcp:tools" in (token.scope or "").split(),
                token and token.scope,
            )
    return 1 if report.failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="the MCP endpoint (tollgate) to authorize against")
    ap.add_argument("--tool", default="", help="a tool to call after listing")
    ap.add_argument("--arguments", default="{}", help="its arguments, JSON")
    ap.add_argument("--expect-tool", action="append", default=[], help="a tool tools/list must show")
    ap.add_argument("--mode", help="mcp.Client mode: legacy, auto or 2026-07-28 (default: the SDK's)")
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if a.selftest:
        return selftest()
    if not a.url:
        ap.error("--url or --selftest")
    report = Report()
    asyncio.run(run_flow(a.url, report, a.tool, json.loads(a.arguments), a.expect_tool, a.mode))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
