// The client checks of the TypeScript clients, written once (as tests/clients/python/checks.py
// is for the Python ones): each client script wraps its SDK in a small adapter and calls
// `runChecks`, which makes the calls fixtures.json names and prints one line per check
// (`ok NAME` / `FAIL NAME: why`). The script exits with `exitCode()` (the number of failures).
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const FIXTURES = JSON.parse(readFileSync(join(here, "..", "fixtures.json"), "utf8"));
const PROFILES = Object.keys(FIXTURES).filter((k) => !k.startsWith("_"));
// Protocol versions of the stateless revision: input-required results instead of server requests.
export const MODERN = ["2026-07-28"];
export const TIMEOUT = { timeout: 30_000 };

let failures = 0;
export const ok = (name) => console.log(`ok ${name}`);
export const fail = (name, why) => {
  failures += 1;
  console.log(`FAIL ${name}: ${String(why).replace(/\n/g, " | ").slice(0, 600)}`);
};
export const exitCode = () => Math.min(failures, 100);

/** Runs one check; `body` resolves to null/undefined on success or to a reason string. */
export async function check(name, body) {
  let why;
  try {
    why = await body();
  } catch (err) {
    why = `raised ${err?.name ?? "Error"}: ${err?.message ?? err}`;
  }
  why === undefined || why === null ? ok(name) : fail(name, why);
}

export const texts = (result) => (result.content ?? []).filter((c) => c.type === "text").map((c) => c.text);
export const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/** `[url, fixtures of the profile]` from the command line, or a usage line and exit 2. */
export function args(script) {
  const [url, profile] = process.argv.slice(2);
  if (!url || !PROFILES.includes(profile)) {
    console.error(`usage: ${script} URL ${PROFILES.join("|")}`);
    process.exit(2);
  }
  return [url, FIXTURES[profile]];
}

/** The fixed answer of the client's `key` handler ("sampling"/"elicitation"): from the
 * session-era check of that name, or from the input-required check (2026-07-28). */
export const answer = (fx, key, fallback) => (fx[key] ?? fx.input_required?.[key])?.answer ?? fallback;

/**
 * The checks every TypeScript client makes. `c` adapts the SDK:
 *   callTool(name, args, options) -> result   (options: { onprogress } beside the timeout)
 *   listTools(), listResources(), readResource(uri), listPrompts(), getPrompt(name, args)
 *   modern: whether the connection speaks the stateless revision
 *   progressSeen(seen): optional, may replace what onprogress saw (see sdk1_client.mjs)
 */
export async function runChecks(c, fx) {
  await check("tools/list", async () => {
    const names = (await c.listTools()).tools.map((t) => t.name);
    const missing = fx.tool_present.filter((n) => !names.includes(n));
    return missing.length ? `missing ${missing} in ${names}` : null;
  });
  await check(`tools/call ${fx.tool.name}`, async () => {
    const result = await c.callTool(fx.tool.name, fx.tool.arguments);
    if (result.isError) return `isError set: ${texts(result)}`;
    return same(texts(result), [fx.tool.expect_text]) ? null : `text ${JSON.stringify(texts(result))} != [${JSON.stringify(fx.tool.expect_text)}]`;
  });
  await check("resources/list", async () => {
    const uris = (await c.listResources()).resources.map((r) => r.uri);
    return uris.includes(fx.resource.uri) ? null : `${fx.resource.uri} not in ${uris}`;
  });
  await check("resources/read", async () => {
    const { contents } = await c.readResource(fx.resource.uri);
    if (contents.length !== 1) return `expected one content, got ${contents.length}`;
    const [r] = contents;
    if (r.uri !== fx.resource.uri) return `uri ${r.uri}`;
    if (r.mimeType !== fx.resource.expect_mime) return `mimeType ${r.mimeType} != ${fx.resource.expect_mime}`;
    return r.text ? null : "empty text";
  });
  await check("prompts/list", async () => {
    const names = (await c.listPrompts()).prompts.map((p) => p.name);
    return names.includes(fx.prompt.name) ? null : `${fx.prompt.name} not in ${names}`;
  });
  await check(`prompts/get ${fx.prompt.name}`, async () => {
    const { messages } = await c.getPrompt(fx.prompt.name, fx.prompt.arguments);
    const found = messages.some((m) => m.role === "user" && (m.content?.text ?? "").includes(fx.prompt.expect_contains));
    return found ? null : `no user message containing ${fx.prompt.expect_contains} in ${JSON.stringify(messages).slice(0, 300)}`;
  });
  for (const spec of [fx.progress, ...(fx.progress_each ?? [])]) {  // progress from each upstream (mixed eras)
    await check(`progress ${spec.name}`, async () => {
      const seen = [];
      const result = await c.callTool(spec.name, spec.arguments, { onprogress: (p) => seen.push(p.progress) });
      if (result.isError) return `isError set: ${texts(result)}`;
      c.progressSeen?.(seen);
      if (seen.length < spec.min_notifications) return `${seen.length} progress notifications, wanted >= ${spec.min_notifications}`;
      return same(seen, [...seen].sort((a, b) => a - b)) ? null : `progress not increasing: ${seen}`;
    });
  }
  const containing = (spec) => async () => {
    const result = await c.callTool(spec.name, spec.arguments);
    const got = texts(result).join(" ");
    return !result.isError && got.includes(spec.expect_contains) ? null : `result ${got.slice(0, 200)}`;
  };
  for (const spec of fx.calls_each ?? []) {  // a tool of each upstream (federated)
    await check(`tools/call ${spec.name}`, containing(spec));
  }
  for (const uri of fx.resources_each ?? []) {  // a resource of each upstream (federated)
    await check(`resources/read ${uri}`, async () => {
      const { contents } = await c.readResource(uri);
      return contents.length && contents[0].uri === uri ? null : `contents ${JSON.stringify(contents).slice(0, 200)}`;
    });
  }
  for (const key of ["sampling", "elicitation"]) {  // server->client requests in a session
    if (fx[key]) await check(`${key} ${fx[key].name}`, containing(fx[key]));
  }
  // Input-required results (2026-07-28): the handler answers, the client retries with the answer.
  for (const [key, spec] of Object.entries(fx.input_required ?? {})) {
    if (!c.modern) {
      ok(`input_required ${key} ${spec.name} skipped: a session-era client cannot answer an input-required result`);
      continue;
    }
    await check(`input_required ${key} ${spec.name}`, containing(spec));
  }
  if (fx.structured) {
    await check(`structuredContent ${fx.structured.name}`, async () => {
      const result = await c.callTool(fx.structured.name, fx.structured.arguments);
      if (result.isError || !same(texts(result), [fx.structured.expect_text])) return `isError=${result.isError} text=${JSON.stringify(texts(result))}`;
      return same(result.structuredContent, fx.structured.expect_structured) ? null : `structuredContent ${JSON.stringify(result.structuredContent)}`;
    });
  }
  if (fx.large) {
    await check("large 1 MiB result", async () => {
      const result = await c.callTool(fx.large.name, fx.large.arguments);
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
      const result = await c.callTool(fx.fail.name, fx.fail.arguments);
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
          Array.from({ length: fx.idle_pause.parallel }, () => c.callTool(fx.tool.name, fx.tool.arguments)),
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
}
