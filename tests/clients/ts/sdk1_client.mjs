// TypeScript SDK 1.x (`Client` + `StreamableHTTPClientTransport`) against one MCP endpoint.
// The same checks as tests/clients/python/checks.py, from tests/clients/fixtures.json,
// one line per check (`ok NAME` / `FAIL NAME: why`); exit code = number of failures.
//
// With MCP_TRANSPORT=sse it speaks the legacy HTTP+SSE transport (`SSEClientTransport`; URL is
// then the event stream's, e.g. http://HOST/mcp/sse).
//
// Usage: node tests/clients/ts/sdk1_client.mjs URL demo|everything|py|federated|federated-sse
// The SDK is resolved from .tools/npm (installed by scripts/install-tools.sh).
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..", "..");
const require = createRequire(join(process.env.TOLLGATE_NPM_DIR || join(repo, ".tools", "npm"), "package.json"));
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");
const { SSEClientTransport } = require("@modelcontextprotocol/sdk/client/sse.js");
const { CreateMessageRequestSchema, ElicitRequestSchema } = require("@modelcontextprotocol/sdk/types.js");

const [url, profile] = process.argv.slice(2);
if (!url || !["demo", "everything", "py", "federated", "federated-sse"].includes(profile)) {
  console.error("usage: sdk1_client.mjs URL demo|everything|py|federated|federated-sse");
  process.exit(2);
}
const fx = JSON.parse(readFileSync(join(here, "..", "fixtures.json"), "utf8"))[profile];
const TIMEOUT = { timeout: 30_000 };
let failures = 0;

const ok = (name) => console.log(`ok ${name}`);
const fail = (name, why) => {
  failures += 1;
  console.log(`FAIL ${name}: ${String(why).replace(/\n/g, " | ").slice(0, 600)}`);
};
async function check(name, body) {
  let why;
  try {
    why = await body();
  } catch (err) {
    why = `raised ${err?.name ?? "Error"}: ${err?.message ?? err}`;
  }
  why === undefined || why === null ? ok(name) : fail(name, why);
}
const texts = (result) => (result.content ?? []).filter((c) => c.type === "text").map((c) => c.text);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const client = new Client({ name: "tollgate-tests-sdk1", version: "0" }, { capabilities: { sampling: {}, elicitation: {} } });
// Fixed answers to an upstream's server->client requests; the tool result must carry them.
client.setRequestHandler(CreateMessageRequestSchema, async () => ({
  role: "assistant", model: "fixed", content: { type: "text", text: fx.sampling?.answer ?? "" },
}));
client.setRequestHandler(ElicitRequestSchema, async () => ({ action: "accept", content: fx.elicitation?.answer ?? {} }));
try {
  const legacy = process.env.MCP_TRANSPORT === "sse";
  const transport = legacy ? new SSEClientTransport(new URL(url)) : new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport, TIMEOUT);
  ok(`initialize (${client.transport?.protocolVersion ?? "?"})`);
} catch (err) {
  fail("session", `connect raised ${err?.message ?? err}`);
  process.exit(1);
}

await check("tools/list", async () => {
  const names = (await client.listTools(undefined, TIMEOUT)).tools.map((t) => t.name);
  const missing = fx.tool_present.filter((n) => !names.includes(n));
  return missing.length ? `missing ${missing} in ${names}` : null;
});
await check(`tools/call ${fx.tool.name}`, async () => {
  const result = await client.callTool({ name: fx.tool.name, arguments: fx.tool.arguments }, undefined, TIMEOUT);
  if (result.isError) return `isError set: ${texts(result)}`;
  return same(texts(result), [fx.tool.expect_text]) ? null : `text ${JSON.stringify(texts(result))} != [${JSON.stringify(fx.tool.expect_text)}]`;
});
await check("resources/list", async () => {
  const uris = (await client.listResources(undefined, TIMEOUT)).resources.map((r) => r.uri);
  return uris.includes(fx.resource.uri) ? null : `${fx.resource.uri} not in ${uris}`;
});
await check("resources/read", async () => {
  const { contents } = await client.readResource({ uri: fx.resource.uri }, TIMEOUT);
  if (contents.length !== 1) return `expected one content, got ${contents.length}`;
  const [c] = contents;
  if (c.uri !== fx.resource.uri) return `uri ${c.uri}`;
  if (c.mimeType !== fx.resource.expect_mime) return `mimeType ${c.mimeType} != ${fx.resource.expect_mime}`;
  return c.text ? null : "empty text";
});
await check("prompts/list", async () => {
  const names = (await client.listPrompts(undefined, TIMEOUT)).prompts.map((p) => p.name);
  return names.includes(fx.prompt.name) ? null : `${fx.prompt.name} not in ${names}`;
});
await check(`prompts/get ${fx.prompt.name}`, async () => {
  const { messages } = await client.getPrompt({ name: fx.prompt.name, arguments: fx.prompt.arguments }, TIMEOUT);
  const found = messages.some((m) => m.role === "user" && (m.content?.text ?? "").includes(fx.prompt.expect_contains));
  return found ? null : `no user message containing ${fx.prompt.expect_contains} in ${JSON.stringify(messages).slice(0, 300)}`;
});
// SSEClientTransport hands every event of one read to the client back to back; the client
// defers notification handlers but settles a response at once, so progress notifications read
// together with their response reach no `onprogress` (it logs "unknown token"). Over the legacy
// transport the check therefore counts the progress notifications the transport received, in
// order, before the response: what the gateway delivered.
const wire = [];
if (process.env.MCP_TRANSPORT === "sse") {
  const deliver = client.transport.onmessage;
  client.transport.onmessage = (m, extra) => {
    if (m.method === "notifications/progress") wire.push(m.params.progress);
    deliver(m, extra);
  };
}
await check(`progress ${fx.progress.name}`, async () => {
  const seen = [];
  wire.length = 0;
  const result = await client.callTool({ name: fx.progress.name, arguments: fx.progress.arguments }, undefined, {
    ...TIMEOUT,
    onprogress: (p) => seen.push(p.progress),
  });
  if (result.isError) return `isError set: ${texts(result)}`;
  if (process.env.MCP_TRANSPORT === "sse" && seen.length < wire.length) seen.splice(0, seen.length, ...wire);
  if (seen.length < fx.progress.min_notifications) return `${seen.length} progress notifications, wanted >= ${fx.progress.min_notifications}`;
  return same(seen, [...seen].sort((a, b) => a - b)) ? null : `progress not increasing: ${seen}`;
});
for (const spec of fx.calls_each ?? []) {  // a tool of each upstream (federated)
  await check(`tools/call ${spec.name}`, async () => {
    const result = await client.callTool({ name: spec.name, arguments: spec.arguments }, undefined, TIMEOUT);
    const got = texts(result).join(" ");
    return !result.isError && got.includes(spec.expect_contains) ? null : `result ${got.slice(0, 200)}`;
  });
}
for (const uri of fx.resources_each ?? []) {  // a resource of each upstream (federated)
  await check(`resources/read ${uri}`, async () => {
    const contents = (await client.readResource({ uri }, TIMEOUT)).contents;
    return contents.length && contents[0].uri === uri ? null : `contents ${JSON.stringify(contents).slice(0, 200)}`;
  });
}
for (const key of ["sampling", "elicitation"]) {
  const spec = fx[key];
  if (!spec) continue;
  await check(`${key} ${spec.name}`, async () => {
    const result = await client.callTool({ name: spec.name, arguments: spec.arguments }, undefined, TIMEOUT);
    const got = texts(result).join(" ");
    return !result.isError && got.includes(spec.expect_contains) ? null : `result ${got.slice(0, 200)}`;
  });
}
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
if (fx.structured) {
  await check(`structuredContent ${fx.structured.name}`, async () => {
    const result = await client.callTool({ name: fx.structured.name, arguments: fx.structured.arguments }, undefined, TIMEOUT);
    if (result.isError || !same(texts(result), [fx.structured.expect_text])) return `isError=${result.isError} text=${JSON.stringify(texts(result))}`;
    return same(result.structuredContent, fx.structured.expect_structured) ? null : `structuredContent ${JSON.stringify(result.structuredContent)}`;
  });
}
if (fx.large) {
  await check("large 1 MiB result", async () => {
    const result = await client.callTool({ name: fx.large.name, arguments: fx.large.arguments }, undefined, TIMEOUT);
    const t = texts(result);
    if (result.isError || t.length !== 1) return `isError=${result.isError} with ${t.length} text blocks`;
    const n = Buffer.byteLength(t[0]);
    if (n !== fx.large.expect_length) return `${n} bytes, wanted ${fx.large.expect_length}`;
    const p = fx.large.expect_pattern;
    const want = p.repeat(Math.floor(t[0].length / p.length) + 1).slice(0, t[0].length);
    if (t[0] === want) return null;
    let at = 0;
    while (t[0][at] === want[at]) at += 1;
    return `bytes differ from the demo's pattern at offset ${at}: ${JSON.stringify(t[0].slice(at, at + 40))}`;
  });
}
if (fx.fail) {
  await check("isError result", async () => {
    const result = await client.callTool({ name: fx.fail.name, arguments: fx.fail.arguments }, undefined, TIMEOUT);
    return result.isError === true ? null : `isError=${result.isError}`;
  });
}

// Once per run, where run_clients.py asks for it: tool calls, a pause longer than the upstream's
// keep-alive idle timeout, tool calls again; `parallel` at a time (fixtures.json "idle_pause").
if (fx.idle_pause && process.env.TOLLGATE_CHECK_IDLE_PAUSE) {
  await check(`tools/call ${fx.tool.name} after ${fx.idle_pause.seconds}s idle`, async () => {
    const calls = async (when) => {
      // Every call settles before the check does, failed or not (none left in flight).
      const settled = await Promise.allSettled(
        Array.from({ length: fx.idle_pause.parallel }, () =>
          client.callTool({ name: fx.tool.name, arguments: fx.tool.arguments }, undefined, TIMEOUT),
        ),
      );
      const failed = settled.find((s) => s.status === "rejected");
      if (failed) return `${when} the pause: raised ${failed.reason?.name ?? "Error"}: ${failed.reason?.message ?? failed.reason}`;
      const bad = settled.map((s) => s.value).find((r) => r.isError || !same(texts(r), [fx.tool.expect_text]));
      return bad ? `${when} the pause: isError=${bad.isError} text=${JSON.stringify(texts(bad))}` : null;
    };
    const before = await calls("before");
    if (before) return before;
    await new Promise((resolve) => setTimeout(resolve, fx.idle_pause.seconds * 1000));
    return await calls("after");
  });
}

try {
  await client.transport?.terminateSession?.();
  await client.close();
} catch (err) {
  fail("close", err?.message ?? err);
}
process.exit(Math.min(failures, 100));
