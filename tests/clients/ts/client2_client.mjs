// TypeScript client 2.x (`@modelcontextprotocol/client`: `Client` + `StreamableHTTPClientTransport`)
// against one MCP endpoint, in the negotiation mode MCP_CLIENT_MODE names: "auto" (probe
// `server/discover`, fall back to initialize on a session-era server; the default), "legacy", or
// "2026-07-28" (pinned: the stateless revision only). The same checks as sdk1_client.mjs, from
// tests/clients/fixtures.json, one line per check (`ok NAME` / `FAIL NAME: why`); exit code =
// number of failures.
//
// Usage: node tests/clients/ts/client2_client.mjs URL demo|everything|py|federated|federated-sse
// The client is resolved from .tools/npm (installed by scripts/install-tools.sh).
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..", "..");
const require = createRequire(join(process.env.TOLLGATE_NPM_DIR || join(repo, ".tools", "npm"), "package.json"));
const { Client, StreamableHTTPClientTransport } = await import(require.resolve("@modelcontextprotocol/client"));

const mode = process.env.MCP_CLIENT_MODE || "auto";
const versionNegotiation = mode === "legacy" || mode === "auto" ? { mode } : { mode: { pin: mode } };
const [url, profile] = process.argv.slice(2);
if (!url || !["demo", "everything", "py", "federated", "federated-sse"].includes(profile)) {
  console.error("usage: client2_client.mjs URL demo|everything|py|federated|federated-sse");
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

const client = new Client(
  { name: "tollgate-tests-client2", version: "0" },
  { capabilities: { sampling: {}, elicitation: {} }, versionNegotiation },
);
// Fixed answers to an upstream's sampling and elicitation (server->client requests in a session,
// input-required rounds in the stateless revision); the tool result must carry them.
client.setRequestHandler("sampling/createMessage", async () => ({
  role: "assistant", model: "fixed", content: { type: "text", text: fx.sampling?.answer ?? "" },
}));
client.setRequestHandler("elicitation/create", async () => ({ action: "accept", content: fx.elicitation?.answer ?? {} }));
try {
  await client.connect(new StreamableHTTPClientTransport(new URL(url)), TIMEOUT);
  ok(`connect (${client.getNegotiatedProtocolVersion?.() ?? client.transport?.protocolVersion ?? "?"})`);
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
  const result = await client.callTool({ name: fx.tool.name, arguments: fx.tool.arguments }, TIMEOUT);
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
await check(`progress ${fx.progress.name}`, async () => {
  const seen = [];
  const result = await client.callTool({ name: fx.progress.name, arguments: fx.progress.arguments }, {
    ...TIMEOUT,
    onprogress: (p) => seen.push(p.progress),
  });
  if (result.isError) return `isError set: ${texts(result)}`;
  if (seen.length < fx.progress.min_notifications) return `${seen.length} progress notifications, wanted >= ${fx.progress.min_notifications}`;
  return same(seen, [...seen].sort((a, b) => a - b)) ? null : `progress not increasing: ${seen}`;
});
for (const spec of fx.calls_each ?? []) {  // a tool of each upstream (federated)
  await check(`tools/call ${spec.name}`, async () => {
    const result = await client.callTool({ name: spec.name, arguments: spec.arguments }, TIMEOUT);
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
    const result = await client.callTool({ name: spec.name, arguments: spec.arguments }, TIMEOUT);
    const got = texts(result).join(" ");
    return !result.isError && got.includes(spec.expect_contains) ? null : `result ${got.slice(0, 200)}`;
  });
}
if (fx.structured) {
  await check(`structuredContent ${fx.structured.name}`, async () => {
    const result = await client.callTool({ name: fx.structured.name, arguments: fx.structured.arguments }, TIMEOUT);
    if (result.isError || !same(texts(result), [fx.structured.expect_text])) return `isError=${result.isError} text=${JSON.stringify(texts(result))}`;
    return same(result.structuredContent, fx.structured.expect_structured) ? null : `structuredContent ${JSON.stringify(result.structuredContent)}`;
  });
}
if (fx.large) {
  await check("large 1 MiB result", async () => {
    const result = await client.callTool({ name: fx.large.name, arguments: fx.large.arguments }, TIMEOUT);
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
    const result = await client.callTool({ name: fx.fail.name, arguments: fx.fail.arguments }, TIMEOUT);
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
          client.callTool({ name: fx.tool.name, arguments: fx.tool.arguments }, TIMEOUT),
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
