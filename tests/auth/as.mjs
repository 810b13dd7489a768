#!/usr/bin/env node
// A real OAuth 2.1 / OpenID authorization server for tollgate's tests: npm oidc-provider (pinned in
// tests/auth/package.json, installed by scripts/install-tools.sh into .tools/oidc), configured as the
// authorization server an MCP gateway sits behind. See tests/auth/README.md.
//
// It listens on 127.0.0.1 (an ephemeral port unless --port), prints ONE JSON line on stdout when
// ready (issuer, endpoints, clients and their secrets), logs to stderr, and exits when stdin closes
// (so it never outlives the test that started it) or on SIGTERM/SIGINT.
//
// Usage: node tests/auth/as.mjs --resource URI [--resource URI ...] [--opaque-resource URI ...]
//          [--scopes "mcp:tools mcp:admin"] [--alg RS256|ES256] [--ttl SECONDS] [--login-as alice]
//          [--port N] [--ignore-stdin]
// Environment: TOLLGATE_OIDC_DIR (where node_modules/oidc-provider is; default <repo>/.tools/oidc).
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes, createPublicKey } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

// stdout carries only this script's JSON lines: everything else logged (oidc-provider prints
// notices with console.info) goes to stderr.
console.log = console.error;
console.info = console.error;

const here = dirname(fileURLToPath(import.meta.url));
const oidcDir = process.env.TOLLGATE_OIDC_DIR || resolve(here, '..', '..', '.tools', 'oidc');
const providerEntry = join(oidcDir, 'node_modules', 'oidc-provider', 'lib', 'index.js');
const joseEntry = join(oidcDir, 'node_modules', 'jose', 'dist', 'webapi', 'index.js');
if (!existsSync(providerEntry)) {
  console.error(`as.mjs: oidc-provider not found at ${providerEntry} (run scripts/install-tools.sh)`);
  process.exit(3);
}
const { default: Provider, errors } = await import(pathToFileURL(providerEntry).href);
const jose = await import(pathToFileURL(joseEntry).href);

const { values: args } = parseArgs({
  options: {
    resource: { type: 'string', multiple: true, default: [] },
    'opaque-resource': { type: 'string', multiple: true, default: [] },
    scopes: { type: 'string', default: 'mcp:tools mcp:admin' },
    alg: { type: 'string', default: 'RS256' },
    ttl: { type: 'string', default: '600' },
    'login-as': { type: 'string', default: 'alice' },
    port: { type: 'string', default: '0' },
    'ignore-stdin': { type: 'boolean', default: false },
  },
});
if (!['RS256', 'ES256'].includes(args.alg)) {
  console.error(`as.mjs: --alg must be RS256 or ES256, not ${args.alg}`);
  process.exit(2);
}
const ttl = Number(args.ttl);
if (!Number.isInteger(ttl) || ttl < 1) {
  console.error(`as.mjs: --ttl must be a whole number of seconds, not ${args.ttl}`);
  process.exit(2);
}
const resourceScope = args.scopes;
// Resource indicators the server issues tokens for: JWT ones and opaque (introspected) ones.
const resources = new Map();
for (const uri of args.resource) resources.set(uri, 'jwt');
for (const uri of args['opaque-resource']) resources.set(uri, 'opaque');

// Principals. Machine clients use client credentials; the code flow logs in --login-as (a user).
const secret = () => randomBytes(24).toString('base64url');
const machineClients = {
  'reader-bot': { roles: ['reader'], tenant: 'acme', format: undefined },
  'admin-bot': { roles: ['admin'], tenant: 'acme', format: undefined },
  // Always opaque tokens, whatever the resource: the introspection path.
  'opaque-bot': { roles: ['reader'], tenant: 'acme', format: 'opaque' },
  // The gateway's own client: introspects opaque tokens and exchanges callers' tokens (RFC 8693).
  gateway: { roles: ['gateway'], tenant: 'acme', format: undefined },
};
for (const c of Object.values(machineClients)) c.secret = secret();
const users = {
  alice: { roles: ['reader'], tenant: 'acme' },
  bob: { roles: ['admin'], tenant: 'acme' },
};
if (!users[args['login-as']]) {
  console.error(`as.mjs: --login-as must be one of ${Object.keys(users).join(', ')}`);
  process.exit(2);
}

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

// Signing keys, fresh each run: two generations of one RSA and one P-256 key. The first is
// published and signs; a `rotate` line on stdin publishes the second beside it and signs with it
// from then on (what a resource server meets as an unknown `kid` that a JWKS refetch resolves).
// All four are in the provider's keystore; /jwks shows only the published ones.
function privateJwk(kind, options, kid, alg) {
  const { privateKey } = generateKeyPairSync(kind, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}
const runId = randomBytes(4).toString('hex');
const generations = [1, 2].map((n) => [
  privateJwk('rsa', { modulusLength: 2048 }, `rsa-${runId}-${n}`, 'RS256'),
  privateJwk('ec', { namedCurve: 'P-256' }, `ec-${runId}-${n}`, 'ES256'),
]);
const signingKeys = generations.flat();
const publicOf = (k) => ({
  ...createPublicKey({ key: k, format: 'jwk' }).export({ format: 'jwk' }), kid: k.kid, alg: k.alg, use: 'sig',
});
let generation = 0; // index into generations: the keys that sign now
let published = generations[0].map(publicOf);
const currentKid = (alg) => generations[generation].find((k) => k.alg === alg).kid;
// The public halves of every key ever published, for verifying subject tokens of a token exchange.
const publicJwks = (header, token) => jose.createLocalJWKSet({ keys: published })(header, token);

// The issuer must be known before the Provider exists, so bind the port first.
const server = createServer();
await new Promise((ok, fail) => {
  server.once('error', fail);
  server.listen(Number(args.port), '127.0.0.1', ok);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

function resourceServerInfo(indicator, client) {
  const format = resources.get(indicator);
  if (!format) throw new errors.InvalidTarget(`unknown resource indicator ${indicator}`);
  const opaque = format === 'opaque' || machineClients[client?.clientId]?.format === 'opaque';
  return {
    scope: resourceScope,
    audience: indicator,
    accessTokenTTL: ttl,
    accessTokenFormat: opaque ? 'opaque' : 'jwt',
    ...(opaque ? {} : { jwt: { sign: { alg: args.alg, kid: currentKid(args.alg) } } }),
  };
}

// Claims beyond the standard ones: roles and tenant of the principal; for an exchanged token
// the subject's claims and the `act` chain (set on the token by the exchange handler).
const exchangeExtras = new WeakMap();
function extraClaims(token) {
  if (exchangeExtras.has(token)) return exchangeExtras.get(token);
  if (token.kind === 'ClientCredentials') {
    const c = machineClients[token.clientId];
    // `sub` here too, so an introspected client-credentials token names its subject like a JWT does.
    return c ? { sub: token.clientId, roles: c.roles, tenant: c.tenant } : undefined;
  }
  const u = users[token.accountId];
  return u ? { roles: u.roles, tenant: u.tenant } : undefined;
}

const provider = new Provider(issuer, {
  clients: Object.entries(machineClients).map(([id, c]) => ({
    client_id: id,
    client_secret: c.secret,
    grant_types: id === 'gateway' ? ['client_credentials', TOKEN_EXCHANGE] : ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: { keys: signingKeys },
  cookies: { keys: [secret()] },
  // The resource scopes too, so registered clients may name them in their `scope` metadata (and
  // discovery's scopes_supported lists them).
  scopes: ['openid', 'offline_access', ...resourceScope.split(' ').filter(Boolean)],
  claims: { openid: ['sub'], profile: ['roles', 'tenant'] },
  ttl: {
    AccessToken: ttl, ClientCredentials: ttl, AuthorizationCode: 60, Grant: 3600, Interaction: 600, Session: 3600,
  },
  findAccount: async (_ctx, sub) => (users[sub] ? {
    accountId: sub,
    claims: async () => ({ sub, roles: users[sub].roles, tenant: users[sub].tenant }),
  } : undefined),
  extraTokenClaims: async (_ctx, token) => extraClaims(token),
  interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // Introspection and revocation by confidential clients only (the gateway introspects
    // anyone's token; a public client could otherwise probe tokens).
    introspection: { enabled: true, allowedPolicy: async (_ctx, client) => client.clientAuthMethod !== 'none' },
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => client.clientAuthMethod !== 'none' || token.clientId === client.clientId,
    },
    // Open dynamic registration (RFC 7591): the MCP SDKs register themselves.
    registration: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator, client) => resourceServerInfo(indicator, client),
    },
  },
  enabledJWA: {
    clientAuthSigningAlgValues: ['RS256', 'ES256', 'HS256'],
  },
});

// RFC 8693 token exchange: a client (the gateway) trades a caller's access token for one with
// another audience. The subject (`sub`, roles, tenant) is kept; `act` names the exchanging client,
// nesting any earlier actor.
async function subjectOf(token) {
  if (token.split('.').length === 3) {
    const { payload } = await jose.jwtVerify(token, publicJwks, { issuer });
    return payload;
  }
  const found = (await provider.AccessToken.find(token)) || (await provider.ClientCredentials.find(token));
  if (!found?.isValid) throw new Error('not an active token');
  const extra = found.extra || {};
  return { ...extra, sub: found.accountId || extra.sub || found.clientId, client_id: found.clientId };
}

provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { params, client } = ctx.oidc;
  if (!params.subject_token) throw new errors.InvalidRequest('missing required parameter \'subject_token\'');
  if (![ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE].includes(params.subject_token_type)) {
    throw new errors.InvalidRequest('subject_token_type must be an access token or a JWT');
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('only access tokens are issued');
  }
  const indicator = params.resource || params.audience;
  if (!indicator) throw new errors.InvalidTarget('resource (or audience) is required');
  let subject;
  try {
    subject = await subjectOf(params.subject_token);
  } catch (e) {
    throw new errors.InvalidGrant(`subject_token is not valid: ${e.message}`);
  }
  const info = resourceServerInfo(indicator, client);
  const granted = (params.scope || subject.scope || '').split(' ')
    .filter((s) => info.scope.split(' ').includes(s)).join(' ');

  const grant = new provider.Grant({ accountId: subject.sub, clientId: client.clientId });
  grant.addResourceScope(indicator, granted);
  const grantId = await grant.save();
  const token = new provider.AccessToken({
    accountId: subject.sub, client, grantId, gty: 'token_exchange', scope: granted || undefined,
  });
  token.resourceServer = new provider.ResourceServer(indicator, info);
  const act = subject.act ? { sub: client.clientId, act: subject.act } : { sub: client.clientId };
  const extra = { act };
  for (const claim of ['roles', 'tenant']) if (subject[claim] !== undefined) extra[claim] = subject[claim];
  exchangeExtras.set(token, extra);
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: token.tokenType,
    expires_in: token.expiration,
    ...(granted ? { scope: granted } : {}),
  };
}, ['subject_token', 'subject_token_type', 'requested_token_type', 'actor_token', 'actor_token_type',
  'resource', 'audience', 'scope'], ['resource', 'audience']);

// The interaction step, with no forms: log in the fixed test user and grant whatever was asked
// (OIDC scopes, claims and resource scopes), then send the browser (an HTTP client following
// redirects) back to the authorization endpoint.
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: args['login-as'] } };
  } else if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    result = { error: 'access_denied', error_description: `unhandled prompt ${prompt.name}` };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

const callback = provider.callback();
let jwksPath = '/jwks'; // oidc-provider's route, confirmed from its discovery document below
server.on('request', (req, res) => {
  // RFC 8414 metadata at its own well-known name too (oidc-provider serves the OpenID one).
  if (req.url === '/.well-known/oauth-authorization-server') req.url = '/.well-known/openid-configuration';
  if (req.method === 'GET' && req.url === jwksPath) {
    res.setHeader('Content-Type', 'application/jwk-set+json; charset=utf-8');
    res.end(JSON.stringify({ keys: published }));
    return;
  }
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((e) => {
      console.error('as.mjs: interaction failed:', e);
      res.statusCode = 500;
      res.end(String(e.message));
    });
    return;
  }
  callback(req, res);
});
provider.on('server_error', (_ctx, e) => console.error('as.mjs: server_error', e));
provider.on('grant.error', (_ctx, e) => console.error('as.mjs: grant.error', e.message, e.error_description ?? ''));

// Endpoints as the server itself publishes them (its discovery document), not as assumed here.
const meta = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
jwksPath = new URL(meta.jwks_uri).pathname;
const ready = {
  issuer,
  discovery: `${issuer}/.well-known/openid-configuration`,
  jwks_uri: meta.jwks_uri,
  token_endpoint: meta.token_endpoint,
  introspection_endpoint: meta.introspection_endpoint,
  authorization_endpoint: meta.authorization_endpoint,
  registration_endpoint: meta.registration_endpoint,
  revocation_endpoint: meta.revocation_endpoint,
  alg: args.alg,
  kids: { RS256: currentKid('RS256'), ES256: currentKid('ES256') },
  resources: Object.fromEntries(resources),
  scopes: resourceScope,
  clients: Object.fromEntries(Object.entries(machineClients).map(([id, c]) => [id, {
    client_secret: c.secret, roles: c.roles, tenant: c.tenant, token_format: c.format ?? 'resource default',
  }])),
  users,
  login_as: args['login-as'],
};
process.stdout.write(`${JSON.stringify(ready)}\n`);

const stop = () => { server.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
if (!args['ignore-stdin']) {
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  // Commands, one a line; each answered with one JSON line on stdout.
  let pending = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const command = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (command === 'rotate' && generation + 1 < generations.length) {
        generation += 1;
        published = [...published, ...generations[generation].map(publicOf)];
        process.stdout.write(`${JSON.stringify({ rotated: true, kids: { RS256: currentKid('RS256'), ES256: currentKid('ES256') } })}\n`);
      } else {
        process.stdout.write(`${JSON.stringify({ error: `unknown or exhausted command: ${command}` })}\n`);
      }
    }
  });
}
