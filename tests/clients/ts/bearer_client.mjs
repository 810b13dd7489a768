// The TypeScript SDK with a bearer token, against an endpoint that authenticates (issue 10):
// SDK 1.x (`@modelcontextprotocol/sdk`, session era) or 2.x (`@modelcontextprotocol/client`,
// either era), the token in `Authorization` on every request. Lists the tools, checks the list is
// exactly EXPECT (comma-separated, sorted), calls `echo`, and, when HIDDEN is given, checks that
// calling it is refused as an unknown tool. One line per check (`ok NAME` / `FAIL NAME: why`);
// exit code = number of failures.
//
// Usage: node tests/clients/ts/bearer_client.mjs sdk1|sdk2 URL TOKEN EXPECT [HIDDEN]
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..", "..");
const require = createRequire(join(process.env.TOLLGATE_NPM_DIR || join(repo, ".tools", "npm"), "package.json"));
const [which, url, token, expect, hidden] = process.argv.slice(2);
let failures = 0;
const ok = (name) => console.log(`ok ${name}`);
const fail = (name, why) => {
  failures += 1;
  console.log(`FAIL ${name}: ${why}`);
};
const headers = { Authorization: `Bearer ${token}` };

let client;
try {
  if (which === "sdk1") {
    const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
    const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");
    client = new Client({ name: "tollgate-bearer-sdk1", version: "0" });
    await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }));
  } else {
    const sdk = await import(require.resolve("@modelcontextprotocol/client"));
    client = new sdk.Client({ name: "tollgate-bearer-sdk2", version: "0" });
    await client.connect(new sdk.StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }));
  }
  ok(`${which} connect`);
} catch (err) {
  fail(`${which} connect`, err?.message ?? String(err));
  process.exit(1);
}
try {
  const listed = await client.listTools();
  const names = listed.tools.map((t) => t.name).sort().join(",");
  if (names === expect) ok(`${which} tools/list shows ${expect}`);
  else fail(`${which} tools/list`, `got ${names}, want ${expect}`);
} catch (err) {
  fail(`${which} tools/list`, err?.message ?? String(err));
}
try {
  const r = await client.callTool({ name: "echo", arguments: { text: "bearer" } });
  const text = r.content?.[0]?.text;
  if (text === "bearer" && !r.isError) ok(`${which} tools/call echo`);
  else fail(`${which} tools/call echo`, JSON.stringify(r));
} catch (err) {
  fail(`${which} tools/call echo`, err?.message ?? String(err));
}
if (hidden) {
  try {
    const r = await client.callTool({ name: hidden, arguments: {} });
    fail(`${which} tools/call ${hidden}`, `not refused: ${JSON.stringify(r)}`);
  } catch (err) {
    const msg = err?.message ?? String(err);
    if (msg.includes(`Unknown tool: ${hidden}`)) ok(`${which} tools/call ${hidden} is an unknown tool`);
    else fail(`${which} tools/call ${hidden}`, msg);
  }
}
await client.close().catch(() => {});
process.exit(failures);
