// The OpenID provider that origin/tests/oidc.rs starts: two issuers (the one the director trusts
// and a stranger sharing its keys, so that only `iss` tells their tokens apart), each on its own
// loopback port over HTTPS with the certificate the test made. Tokens come from the
// client_credentials grant with resource indicators, so each access token is a JWT whose `aud` is
// the resource server's audience and whose signing algorithm the resource server picks.
//
// With a third argument, the console's address (origin/tests/console.rs), it also registers the
// console as a public client (authorization code with PKCE, no secret) redirecting there, and
// people sign in on its login page with the names below (any password: the provider's
// development login).
//
// Usage: node provider.mjs CERT_PEM KEY_PEM [CONSOLE_REDIRECT_URI]. Prints one JSON line
// {"issuer", "other_issuer"} when both listen, and exits when its standard input closes (the test
// process ended, however it ended).
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

import Provider from 'oidc-provider';

const [certPath, keyPath, consoleRedirect] = process.argv.slice(2);
const tls = { cert: readFileSync(certPath), key: readFileSync(keyPath) };

function privateJwk(kid, type, options) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig' };
}

const jwks = {
  keys: [
    privateJwk('rsa-1', 'rsa', { modulusLength: 2048 }),
    privateJwk('ec-1', 'ec', { namedCurve: 'P-256' }),
    privateJwk('ed-1', 'ed25519'),
  ],
};

// Every resource below except `other` speaks for the director's audience; they differ only in
// how their access tokens are signed, so that one verifier sees every algorithm.
const DIRECTOR = 'urn:depotmesh:director';
const resources = {
  'urn:depotmesh:director': { audience: DIRECTOR },
  'urn:depotmesh:director:ps256': { audience: DIRECTOR, jwt: { sign: { alg: 'PS256' } } },
  'urn:depotmesh:director:es256': { audience: DIRECTOR, jwt: { sign: { alg: 'ES256' } } },
  'urn:depotmesh:director:eddsa': { audience: DIRECTOR, jwt: { sign: { alg: 'EdDSA' } } },
  'urn:depotmesh:director:hs256': {
    audience: DIRECTOR,
    jwt: { sign: { alg: 'HS256', key: 'a shared secret the director must never accept' } },
  },
  'urn:depotmesh:other': { audience: 'urn:depotmesh:other' },
};

// Who each client is, as the company's directory would say it.
const identities = {
  'alice-console': {
    preferred_username: 'alice',
    roles: ['approver', 'viewer'],
    realm_access: { roles: ['operator'] },
  },
  automation: {},
};

const clients = Object.keys(identities).map((clientId) => ({
  client_id: clientId,
  client_secret: `${clientId}-secret`,
  token_endpoint_auth_method: 'client_secret_post',
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  scope: 'campaigns',
}));

// People who sign in through the console, by login name, and their roles, as the company's
// directory would say.
const people = {
  vera: ['viewer'],
  'bob@safety': ['approver'],
  'carol@safety': ['approver'],
  audrey: ['auditor'],
};

if (consoleRedirect) {
  clients.push({
    client_id: 'depotmesh-console',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: [consoleRedirect],
  });
}

function configuration() {
  return {
    clients,
    jwks,
    scopes: ['openid', 'campaigns'],
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => DIRECTOR,
        getResourceServerInfo(_ctx, resourceIndicator) {
          const resource = resources[resourceIndicator];
          if (!resource) throw new Provider.errors.InvalidTarget();
          return {
            scope: 'campaigns',
            accessTokenFormat: 'jwt',
            accessTokenTTL: 600,
            ...resource,
          };
        },
      },
    },
    extraTokenClaims(_ctx, token) {
      if (token.accountId) {
        return { preferred_username: token.accountId, roles: people[token.accountId] ?? [] };
      }
      return identities[token.clientId];
    },
  };
}

async function listen(server) {
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `https://127.0.0.1:${server.address().port}`;
}

async function start() {
  const server = createServer(tls);
  const issuer = await listen(server);
  const provider = new Provider(issuer, configuration());
  server.on('request', provider.callback());
  return issuer;
}

const issuer = await start();
const otherIssuer = await start();
process.stdout.write(`${JSON.stringify({ issuer, other_issuer: otherIssuer })}\n`);

process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
