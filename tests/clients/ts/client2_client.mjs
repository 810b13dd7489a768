// TypeScript client 2.x (`@modelcontextprotocol/client`: `Client` + `StreamableHTTPClientTransport`)
// against one MCP endpoint, in the negotiation mode MCP_CLIENT_MODE names: "auto" (probe
// `server/discover`, fall back to initialize on a session-era server; the default), "legacy", or
// "2026-07-28" (pinned: the stateless revision only). The checks of checks.mjs (the same as
// sdk1_client.mjs), from tests/clients/fixtures.json, one line per check (`ok NAME` /
// `FAIL NAME: why`); exit code = number of failures.
//
// Usage: node tests/clients/ts/client2_client.mjs URL PROFILE (a key of fixtures.json)
// The client is resolved from .tools/npm (installed by scripts/install-tools.sh).
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { MODERN, TIMEOUT, answer, args, exitCode, fail, ok, runChecks } from "./checks.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..", "..");
const require = createRequire(join(process.env.TOLLGATE_NPM_DIR || join(repo, ".tools", "npm"), "package.json"));
const { Client, StreamableHTTPClientTransport } = await import(require.resolve("@modelcontextprotocol/client"));

const mode = process.env.MCP_CLIENT_MODE || "auto";
const versionNegotiation = mode === "legacy" || mode === "auto" ? { mode } : { mode: { pin: mode } };
const [url, fx] = args("client2_client.mjs");

const client = new Client(
  { name: "tollgate-tests-client2", version: "0" },
  { capabilities: { sampling: {}, elicitation: {} }, versionNegotiation },
);
// Fixed answers to an upstream's sampling and elicitation (server->client requests in a session,
// input-required rounds in the stateless revision); the tool result must carry them.
client.setRequestHandler("sampling/createMessage", async () => ({
  role: "assistant", model: "fixed", content: { type: "text", text: answer(fx, "sampling", "") },
}));
client.setRequestHandler("elicitation/create", async () => ({ action: "accept", content: answer(fx, "elicitation", {}) }));
let negotiated = "?";
try {
  await client.connect(new StreamableHTTPClientTransport(new URL(url)), TIMEOUT);
  negotiated = client.getNegotiatedProtocolVersion?.() ?? client.transport?.protocolVersion ?? "?";
  ok(`connect (${negotiated})`);
} catch (err) {
  fail("session", `connect raised ${err?.message ?? err}`);
  process.exit(1);
}

await runChecks({
  callTool: (name, args, options = {}) => client.callTool({ name, arguments: args }, { ...TIMEOUT, ...options }),
  listTools: () => client.listTools(undefined, TIMEOUT),
  listResources: () => client.listResources(undefined, TIMEOUT),
  readResource: (uri) => client.readResource({ uri }, TIMEOUT),
  listPrompts: () => client.listPrompts(undefined, TIMEOUT),
  getPrompt: (name, args) => client.getPrompt({ name, arguments: args }, TIMEOUT),
  modern: MODERN.includes(negotiated),
}, fx);

try {
  await client.transport?.terminateSession?.();
  await client.close();
} catch (err) {
  fail("close", err?.message ?? err);
}
process.exit(exitCode());
