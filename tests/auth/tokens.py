#!/usr/bin/env python3
"""Real tokens for tollgate's Python tests, from the test authorization server (tests/auth/as.mjs).

Standard library only, so it runs under the system python3 and the mcp venvs alike.

    from tokens import AuthServer          # (sys.path: tests/auth)
    with AuthServer.start(["http://127.0.0.1:8080/mcp"]) as auth:
        jwt = auth.client_credentials("reader-bot", "http://127.0.0.1:8080/mcp", "mcp:tools")
        opaque = auth.opaque_token("http://127.0.0.1:8080/mcp")
        auth.introspect(opaque)["active"]   # True
        swapped = auth.exchange(jwt, "http://127.0.0.1:9000/upstream")

Command line:  tokens.py --resource URI [--client reader-bot] [--scope S] [--opaque]
prints one access token (the server is started and stopped around it), and
tokens.py --selftest  runs every flow once against a fresh server (exit status 0 when all hold).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AS_SCRIPT = REPO / "tests" / "auth" / "as.mjs"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def tools_dir() -> Path:
    return Path(os.environ.get("TOLLGATE_TOOLS_DIR", REPO / ".tools"))


def node_binary() -> str:
    """Node 22 from .tools (oidc-provider 9 wants a current LTS), else whatever node is on PATH."""
    pinned = tools_dir() / "node" / "node_modules" / ".bin" / "node"
    if pinned.exists():
        return str(pinned)
    found = shutil.which("node")
    if not found:
        raise RuntimeError("node not found (run scripts/install-tools.sh)")
    return found


def installed() -> bool:
    """Whether scripts/install-tools.sh has installed oidc-provider into .tools/oidc."""
    oidc = Path(os.environ.get("TOLLGATE_OIDC_DIR", tools_dir() / "oidc"))
    return (oidc / "node_modules" / "oidc-provider" / "lib" / "index.js").exists()


def b64url_json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def jwt_parts(token: str) -> tuple[dict, dict]:
    """Header and claims of a JWT, NOT verified (tests compare them; the gateway verifies)."""
    header, claims, _sig = token.split(".")
    return b64url_json(header), b64url_json(claims)


class OAuthError(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class AuthServer:
    """One running as.mjs. Stops when closed (or when this process exits: its stdin closes)."""

    def __init__(self, proc: subprocess.Popen, ready: dict):
        self.proc = proc
        self.ready = ready
        self.issuer: str = ready["issuer"]
        self.jwks_uri: str = ready["jwks_uri"]
        self.token_endpoint: str = ready["token_endpoint"]
        self.introspection_endpoint: str = ready["introspection_endpoint"]
        self.clients: dict = ready["clients"]

    @classmethod
    def start(
        cls,
        resources: list[str],
        opaque_resources: list[str] = (),
        alg: str = "RS256",
        login_as: str = "alice",
        extra_args: list[str] = (),
    ) -> "AuthServer":
        cmd = [node_binary(), str(AS_SCRIPT), "--alg", alg, "--login-as", login_as]
        for r in resources:
            cmd += ["--resource", r]
        for r in opaque_resources:
            cmd += ["--opaque-resource", r]
        cmd += list(extra_args)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"as.mjs exited ({proc.returncode}) before it was ready")
        return cls(proc, json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # as.mjs exits when its stdin closes
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "AuthServer":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------------

    def _post(self, url: str, form: dict, client: str) -> dict:
        secret = self.clients[client]["client_secret"]
        basic = base64.b64encode(
            f"{urllib.parse.quote(client, safe='')}:{urllib.parse.quote(secret, safe='')}".encode()
        ).decode()
        body = urllib.parse.urlencode({k: v for k, v in form.items() if v is not None}).encode()
        req = urllib.request.Request(
            url,
            data=body,
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            raise OAuthError(e.code, json.load(e)) from None

    def token_response(self, client: str, resource: str, scope: str | None = None) -> dict:
        """The whole client-credentials token response (access_token, expires_in, scope, ...)."""
        return self._post(
            self.token_endpoint,
            {"grant_type": "client_credentials", "resource": resource, "scope": scope},
            client,
        )

    def client_credentials(self, client: str, resource: str, scope: str | None = None) -> str:
        """An access token for `client` (reader-bot, admin-bot, opaque-bot, gateway) and `resource`:
        a JWT, unless the resource is an --opaque-resource or the client is opaque-bot."""
        return self.token_response(client, resource, scope)["access_token"]

    def opaque_token(self, resource: str, scope: str | None = None) -> str:
        """An opaque (introspection-only) token, from opaque-bot."""
        return self.client_credentials("opaque-bot", resource, scope)

    def introspect(self, token: str, client: str = "gateway") -> dict:
        """RFC 7662 introspection, authenticated as `client`."""
        return self._post(self.introspection_endpoint, {"token": token}, client)

    def exchange(
        self, subject_token: str, resource: str, client: str = "gateway", scope: str | None = None
    ) -> dict:
        """RFC 8693 token exchange by `client` (only gateway may): the whole response."""
        return self._post(
            self.token_endpoint,
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": subject_token,
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "resource": resource,
                "scope": scope,
            },
            client,
        )

    def rotate_keys(self) -> dict:
        """Publishes the second key generation beside the first and signs with it from now on
        (once): returns the new kids {"RS256": ..., "ES256": ...}."""
        self.proc.stdin.write("rotate\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        answer = json.loads(line)
        if not answer.get("rotated"):
            raise RuntimeError(f"rotate: {answer}")
        self.ready["kids"] = answer["kids"]
        return answer["kids"]

    def jwks(self) -> dict:
        with urllib.request.urlopen(self.jwks_uri, timeout=10) as resp:
            return json.load(resp)


def selftest() -> int:
    """Every flow once; prints what failed. Exercised by tests/auth/README.md's instructions."""
    resource = "http://127.0.0.1:8080/mcp"
    other = "http://127.0.0.1:9000/upstream"
    failures = []

    def check(what: str, ok: bool) -> None:
        print(f"{'ok ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    with AuthServer.start([resource, other]) as auth:
        jwt = auth.client_credentials("reader-bot", resource, "mcp:tools")
        header, claims = jwt_parts(jwt)
        check("JWT header alg/kid/typ", header == {"alg": "RS256", "kid": auth.ready["kids"]["RS256"], "typ": "at+jwt"})
        check("JWT iss/aud/sub", (claims["iss"], claims["aud"], claims["sub"]) == (auth.issuer, resource, "reader-bot"))
        check("JWT roles/scope", (claims["roles"], claims["scope"]) == (["reader"], "mcp:tools"))
        check("JWKS publishes the kid", header["kid"] in [k["kid"] for k in auth.jwks()["keys"]])
        opaque = auth.opaque_token(resource)
        check("opaque token is not a JWT", opaque.count(".") == 0)
        info = auth.introspect(opaque)
        check(
            "introspection: active, aud, sub, roles",
            (info.get("active"), info.get("aud"), info.get("sub"), info.get("roles"))
            == (True, resource, "opaque-bot", ["reader"]),
        )
        check("introspection of garbage is inactive", auth.introspect("nope") == {"active": False})
        swapped = auth.exchange(jwt, other)
        _, sc = jwt_parts(swapped["access_token"])
        check(
            "exchange: new aud, same sub and roles, act = gateway",
            (sc["aud"], sc["sub"], sc["roles"], sc["act"], swapped["issued_token_type"])
            == (other, "reader-bot", ["reader"], {"sub": "gateway"}, ACCESS_TOKEN_TYPE),
        )
        try:
            auth.exchange(jwt, other, client="reader-bot")
            check("exchange refused to a client without the grant", False)
        except OAuthError as e:
            check("exchange refused to a client without the grant", e.status == 400)
        kids = auth.rotate_keys()
        rotated, _ = jwt_parts(auth.client_credentials("reader-bot", resource))
        check("after rotate_keys: the new kid signs and is published",
              rotated["kid"] == kids["RS256"] != header["kid"] and rotated["kid"] in [k["kid"] for k in auth.jwks()["keys"]])
        try:
            auth.client_credentials("reader-bot", "http://127.0.0.1:1/unknown")
            check("unknown resource refused", False)
        except OAuthError as e:
            check("unknown resource refused", e.body.get("error") == "invalid_target")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resource", action="append", default=[])
    ap.add_argument("--client", default="reader-bot")
    ap.add_argument("--scope")
    ap.add_argument("--opaque", action="store_true", help="an opaque token (opaque-bot)")
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    if a.selftest:
        return selftest()
    if not a.resource:
        ap.error("--resource is required")
    with AuthServer.start(a.resource) as auth:
        client = "opaque-bot" if a.opaque else a.client
        print(auth.client_credentials(client, a.resource[0], a.scope))
    return 0


if __name__ == "__main__":
    sys.exit(main())
