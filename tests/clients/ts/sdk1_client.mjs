// TypeScript SDK 1.x (`Client` + `StreamableHTTPClientTransport`) against one MCP endpoint.
// The checks of checks.mjs (the same as tests/clients/python/checks.py), from
// tests/clients/fixtures.json, and on a federated endpoint a batch and a task; one line per
// check (`ok NAME` / `FAIL NAME: why`); exit code = number of failures.
//
// With MCP_TRANSPORT=sse it speaks the legacy HTTP+SSE transport (`SSEClientTransport`; URL is
// then the event stream's, e.g. http://HOST/mcp/sse).
//
// Usage: node tests/clients/ts/sdk1_client.mjs URL PROFILE (a key of fixtures.json)
// The SDK is resolved from .tools/npm (installed by scripts/install-tools.sh).
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { TIMEOUT, answer, args, check, exitCode, fail, ok, runChecks, same, texts } from "./checks.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..", "..");
const require = createRequire(join(process.env.TOLLGATE_NPM_DIR || join(repo, ".tools", "npm"), "package.json"));
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");
const { SSEClientTransport } = require("@modelcontextprotocol/sdk/client/sse.js");
const { CreateMessageRequestSchema, ElicitRequestSchema } = require("@modelcontextprotocol/sdk/types.js");

const [url, fx] = args("sdk1_client.mjs");

const client = new Client({ name: "tollgate-tests-sdk1", version: "0" }, { capabilities: { sampling: {}, elicitation: {} } });
// Fixed answers to an upstream's server->client requests; the tool result must carry them.
client.setRequestHandler(CreateMessageRequestSchema, async () => ({
  role: "assistant", model: "fixed", content: { type: "text", text: answer(fx, "sampling", "") },
}));
client.setRequestHandler(ElicitRequestSchema, async () => ({ action: "accept", content: answer(fx, "elicitation", {}) }));
try {
  const legacy = process.env.MCP_TRANSPORT === "sse";
  const transport = legacy ? new SSEClientTransport(new URL(url)) : new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport, TIMEOUT);
  ok(`initialize (${client.transport?.protocolVersion ?? "?"})`);
} catch (err) {
  fail("session", `connect raised ${err?.message ?? err}`);
  process.exit(1);
}

// SSEClientTransport hands every event of one read to the client back to back; the client
// defers notification handlers but settles a response at once, so progress notifications read
// together with their response reach no `onprogress` (it logs "unknown token"). Over the legacy
// transport the progress check therefore counts the progress notifications the transport
// received, in order, before the response: what the gateway delivered.
const wire = [];
if (process.env.MCP_TRANSPORT === "sse") {
  const deliver = client.transport.onmessage;
  client.transport.onmessage = (m, extra) => {
    if (m.method === "notifications/progress") wire.push(m.params.progress);
    deliver(m, extra);
  };
}
await runChecks({
  callTool: (name, args, options = {}) => {
    wire.length = 0;
    return client.callTool({ name, arguments: args }, undefined, { ...TIMEOUT, ...options });
  },
  listTools: () => client.listTools(undefined, TIMEOUT),
  listResources: () => client.listResources(undefined, TIMEOUT),
  readResource: (uri) => client.readResource({ uri }, TIMEOUT),
  listPrompts: () => client.listPrompts(undefined, TIMEOUT),
  getPrompt: (name, args) => client.getPrompt({ name, arguments: args }, TIMEOUT),
  modern: false,  // SDK 1.x speaks the session era only
  progressSeen: (seen) => {
    if (process.env.MCP_TRANSPORT === "sse" && seen.length < wire.length) seen.splice(0, seen.length, ...wire);
  },
}, fx);
// Federated only: a JSON-RPC batch in a 2025-03-26 session, sent through the SDK's own transport
// (its Client never batches; the transport sends arrays and reads an array or an event stream
// back). A call to each upstream, the sampling tool (its request must reach us mid-batch and be
// answered), a ping, a list and a notification; each request must get its own answer.
// (Not over the legacy HTTP+SSE transport: batches came with 2025-03-26.)
if (fx.calls_each && fx.sampling && process.env.MCP_TRANSPORT !== "sse") {
  await check("batch (2025-03-26) across upstreams", async () => {
    const t = new StreamableHTTPClientTransport(new URL(url));
    const got = new Map();
    let asked = 0;
    t.onmessage = (m) => {
      if (m.method === "sampling/createMessage" && m.id !== undefined) {
        asked += 1;
        t.send({ jsonrpc: "2.0", id: m.id, result: { role: "assistant", model: "fixed", content: { type: "text", text: fx.sampling.answer } } })
          .catch((err) => got.set("sampling-answer", { error: String(err) }));
      } else if (m.id !== undefined && ("result" in m || "error" in m)) {
        got.set(m.id, m);
      }
    };
    const waitFor = async (ids) => {
      const until = Date.now() + 30_000;
      while (!ids.every((id) => got.has(id))) {
        if (Date.now() > until) throw new Error(`no answer for ${ids.filter((id) => !got.has(id))}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    try {
      await t.start();
      await t.send({ jsonrpc: "2.0", id: "init", method: "initialize", params: {
        protocolVersion: "2025-03-26", capabilities: { sampling: {} }, clientInfo: { name: "tollgate-tests-sdk1-batch", version: "0" } } });
      await waitFor(["init"]);
      const version = got.get("init").result?.protocolVersion;
      if (version !== "2025-03-26") return `initialize negotiated ${version}`;
      t.setProtocolVersion(version);
      await t.send({ jsonrpc: "2.0", method: "notifications/initialized" });
      const calls = fx.calls_each.map((spec, i) => ({ jsonrpc: "2.0", id: `call-${i}`, method: "tools/call", params: { name: spec.name, arguments: spec.arguments } }));
      const batch = [
        ...calls,
        { jsonrpc: "2.0", id: "sample", method: "tools/call", params: { name: fx.sampling.name, arguments: fx.sampling.arguments } },
        { jsonrpc: "2.0", id: "ping", method: "ping" },
        { jsonrpc: "2.0", id: "list", method: "tools/list" },
        { jsonrpc: "2.0", method: "notifications/roots/list_changed" },
      ];
      await t.send(batch);
      await waitFor([...calls.map((c) => c.id), "sample", "ping", "list"]);
      for (const [i, spec] of fx.calls_each.entries()) {
        const r = got.get(`call-${i}`);
        const text = texts(r.result ?? {}).join(" ");
        if (!text.includes(spec.expect_contains)) return `${spec.name}: ${JSON.stringify(r).slice(0, 200)}`;
      }
      const sampled = texts(got.get("sample").result ?? {}).join(" ");
      if (asked !== 1 || !sampled.includes(fx.sampling.expect_contains)) return `sampling asked ${asked}x, result ${sampled.slice(0, 200)}`;
      if (!same(got.get("ping").result, {})) return `ping ${JSON.stringify(got.get("ping"))}`;
      const names = (got.get("list").result?.tools ?? []).map((x) => x.name);
      if (!fx.tool_present.every((n) => names.includes(n))) return `tools/list ${names}`;
      return got.has("sampling-answer") ? `answering sampling: ${got.get("sampling-answer").error}` : null;
    } finally {
      await t.terminateSession().catch(() => {});
      await t.close();
    }
  });
}
// Federated only: a 2025-11-25 task through the SDK's experimental tasks client (server-everything's
// task tool): the task id the client sees is the gateway's (`tgt~`), polling, the result, tasks/get
// and tasks/list all find their way to the upstream that owns the task.
if (fx.task) {
  await check(`task ${fx.task.name}`, async () => {
    let taskId;
    let text = "";
    for await (const msg of client.experimental.tasks.callToolStream(
      { name: fx.task.name, arguments: fx.task.arguments }, undefined, { ...TIMEOUT, task: { ttl: 60_000 } })) {
      if (msg.type === "taskCreated") taskId = msg.task.taskId;
      if (msg.type === "result") text = texts(msg.result).join(" ");
      if (msg.type === "error") return `stream error: ${msg.error?.message ?? msg.error}`;
    }
    if (!taskId?.startsWith("tgt~")) return `task id ${taskId} is not the gateway's`;
    if (!text.includes(fx.task.expect_contains)) return `result ${text.slice(0, 200)}`;
    const got = await client.experimental.tasks.getTask(taskId, TIMEOUT);
    if (got.taskId !== taskId || got.status !== "completed") return `tasks/get ${JSON.stringify(got).slice(0, 200)}`;
    const listed = [];
    let cursor;
    do {
      const page = await client.experimental.tasks.listTasks(cursor, TIMEOUT);
      listed.push(...page.tasks.map((t) => t.taskId));
      cursor = page.nextCursor;
    } while (cursor && listed.length < 1000);
    return listed.includes(taskId) ? null : `tasks/list ${listed.length} tasks, not ${taskId}`;
  });
}
try {
  await client.transport?.terminateSession?.();
  await client.close();
} catch (err) {
  fail("close", err?.message ?? err);
}
process.exit(exitCode());
