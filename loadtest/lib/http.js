// Tagged requests to the sidecar, and the checks that say each answer is the right one.
//
// Every request carries `expected:<class>` (and a fixed `name`, so URLs with tokens never become tags).
// Each class declares its expected status through `responseCallback`, so `http_req_failed{expected:X}`
// means "the sidecar answered something else", and `checks{expected:X}` adds the body-level assertions
// (the `reason` of a rejection, RFC 6750 WWW-Authenticate, headers that reached the app).

import http from 'k6/http';
import { check, fail } from 'k6';
import { SharedArray } from 'k6/data';

function loopback(name) {
  const v = __ENV[name];
  if (!v) throw new Error(`${name} is not set: start scenarios with loadtest/run.sh`);
  if (!/^http:\/\/127\.\d+\.\d+\.\d+:\d+$/.test(v)) throw new Error(`${name}=${v}: only http://127.x.x.x:PORT is allowed`);
  return v;
}

export const SIDECAR = loopback('SIDECAR_URL');
export const ADMIN = loopback('ADMIN_URL');
export const ISSUER = loopback('ISSUER_URL');
export const TOKENS_DIR = __ENV.TOKENS_DIR;
export const ORIGIN = __ENV.CORS_ORIGIN || 'http://localhost:3000';
export const GRACE_HEADER = 'x-auth-token-expired-seconds';
export const SUBJECT_HEADER = 'x-auth-subject';

// What the sidecar must answer for each class (sidecar/errors.py).
export const CLASSES = {
  ok: { status: 200 },
  in_grace: { status: 200 },
  public: { status: 200 },
  expired: { status: 401, reason: 'expired', error: 'invalid_token' },
  bad_signature: { status: 401, reason: 'bad_signature', error: 'invalid_token' },
  unknown_kid: { status: 401, reason: 'unknown_kid', error: 'invalid_token' },
  wrong_aud: { status: 401, reason: 'audience_mismatch', error: 'invalid_token' },
  wrong_iss: { status: 401, reason: 'issuer_mismatch', error: 'invalid_token' },
  not_yet_valid: { status: 401, reason: 'not_yet_valid', error: 'invalid_token' },
  unsupported_alg: { status: 401, reason: 'unsupported_alg', error: 'invalid_token' },
  malformed: { status: 401, reason: 'malformed', error: 'invalid_token' },
  missing_token: { status: 401, reason: 'missing_token', error: null },
  multiple_tokens: { status: 400, reason: 'multiple_tokens', error: 'invalid_request' },
  // CORS classes (cors scenario)
  preflight_ok: { status: 204 },
  preflight_rejected: { status: 403, reason: 'cors_rejected' },
  cors_ok: { status: 200 },
  cors_foreign: { status: 200 },
  // valid tokens signed by the key that was current before a rotation
  ok_old_key: { status: 200 },
  // requests that are not the sidecar's traffic: dev issuer, admin port
  aux: { status: 200 },
};

const CALLBACKS = {};
for (const [cls, spec] of Object.entries(CLASSES)) CALLBACKS[cls] = http.expectedStatuses(spec.status);

// A token set written by loadtest/stack.py, loaded once and shared by all VUs. Init context only.
export function tokenSet(name) {
  if (!TOKENS_DIR) throw new Error('TOKENS_DIR is not set: start scenarios with loadtest/run.sh');
  return new SharedArray(name, () => {
    const list = JSON.parse(open(`${TOKENS_DIR}/${name}.json`));
    if (!Array.isArray(list) || list.length === 0) throw new Error(`token set ${name} is empty`);
    return list;
  });
}

function parse(res) {
  try {
    return res.json();
  } catch (e) {
    return null;
  }
}

function echoHeaders(res) {
  const body = parse(res);
  const out = {};
  if (body && Array.isArray(body.headers)) for (const [k, v] of body.headers) out[String(k).toLowerCase()] = v;
  return out;
}

function header(res, name) {
  const want = name.toLowerCase();
  for (const k of Object.keys(res.headers)) if (k.toLowerCase() === want) return res.headers[k];
  return undefined;
}

// The assertions for one answer of class `cls`. Returns true when all hold.
export function verify(cls, res, o) {
  const spec = CLASSES[cls];
  const tags = { expected: cls };
  const checks = {};
  checks[`${cls}: status ${spec.status}`] = (r) => r.status === spec.status;
  if (spec.reason) {
    checks[`${cls}: reason ${spec.reason}`] = (r) => {
      const b = parse(r);
      return b !== null && b.reason === spec.reason && b.status === spec.status;
    };
  }
  if (spec.error !== undefined) {
    checks[`${cls}: WWW-Authenticate`] = (r) => {
      const h = header(r, 'WWW-Authenticate') || '';
      if (!h.startsWith('Bearer realm=')) return false;
      return spec.error === null ? !h.includes('error=') : h.includes(`error="${spec.error}"`);
    };
  }
  if (cls === 'in_grace') {
    checks['in_grace: app sees the grace header'] = (r) => Number(echoHeaders(r)[GRACE_HEADER]) > 0;
  }
  if (o && o.subject) {
    checks[`${cls}: app sees the subject`] = (r) => echoHeaders(r)[SUBJECT_HEADER] === o.subject;
  }
  if (o && o.extraChecks) Object.assign(checks, o.extraChecks);
  return check(res, checks, tags);
}

// One request of class `cls` to the sidecar. `token` null/undefined sends no Authorization.
// o: {path, method, headers, body (read the body even for 200s), subject (check X-Auth-Subject), name}
export function send(cls, token, o) {
  o = o || {};
  const spec = CLASSES[cls];
  if (!spec) fail(`unknown class ${cls}`);
  const headers = Object.assign({}, o.headers || {});
  let url = SIDECAR + (o.path || '/api/resource');
  if (token !== null && token !== undefined) headers.Authorization = `Bearer ${token}`;
  if (cls === 'multiple_tokens') url += `?access_token=${encodeURIComponent(token)}`;
  const needBody = spec.status !== 200 || cls === 'in_grace' || Boolean(o.body) || Boolean(o.subject);
  const res = http.request(o.method || 'GET', url, o.payload || null, {
    headers,
    tags: { expected: cls, name: o.name || cls },
    responseCallback: CALLBACKS[cls],
    responseType: needBody ? 'text' : 'none',
    timeout: o.timeout || '10s',
  });
  verify(cls, res, o);
  return res;
}

// A reused token set as `pick(i)`. Reading a SharedArray element JSON-decodes it (~90 us per token,
// enough to cap one k6 core near 3,000 req/s), so each VU copies the set into a plain array once, in its
// init context (__VU > 0; the options-only init has __VU == 0). Init context only (like tokenSet).
export function tokenPool(name) {
  const shared = tokenSet(name);
  let local = null;
  const fill = () => {
    local = [];
    for (let k = 0; k < shared.length; k++) local.push(shared[k]);
  };
  if (__VU > 0) fill();
  return (i) => {
    if (local === null) fill();
    return local[i % local.length];
  };
}

// Send one request of `cls`, picking its token from the matching pool (tokenPool) by index `i`.
export function sendClass(cls, pools, i, o) {
  if (cls === 'public') return send('public', null, Object.assign({ path: '/public/info' }, o || {}));
  if (cls === 'missing_token') return send('missing_token', null, o);
  if (cls === 'in_grace') return send('in_grace', graceToken(), o);
  const pick = cls === 'multiple_tokens' ? pools.ok : pools[cls];
  if (!pick) fail(`no token pool loaded for ${cls}`);
  return send(cls, pick(i), o);
}

// A request that is not sidecar traffic (dev issuer, admin port): tagged `aux`, never in a sidecar threshold.
export function aux(method, url, name, params) {
  return http.request(method, url, null, Object.assign({
    tags: { expected: 'aux', name },
    responseCallback: CALLBACKS.aux,
    timeout: '10s',
  }, params || {}));
}

// A token signed by the issuer's current key, from its GET /token. Returns {token, kid} or null.
export function issuerToken(sub, ttl) {
  const res = aux('GET', `${ISSUER}/token?sub=${encodeURIComponent(sub)}&ttl=${ttl || 3600}`, 'issuer /token');
  if (res.status !== 200) return null;
  const b = parse(res);
  return b && b.access_token ? { token: b.access_token, kid: b.kid } : null;
}

// The sidecar's Prometheus metrics as {"name{a=\"x\",b=\"y\"}": value} (labels as exposed).
export function adminMetrics() {
  const res = aux('GET', `${ADMIN}/metrics`, 'admin /metrics');
  const out = {};
  if (res.status !== 200) return out;
  for (const line of String(res.body).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out[line.slice(0, at)] = Number(line.slice(at + 1));
  }
  return out;
}

// Sum of every series of `name` whose labels include all of `labels`.
export function metricSum(metrics, name, labels) {
  let total = 0;
  for (const [key, v] of Object.entries(metrics)) {
    if (key !== name && !key.startsWith(`${name}{`)) continue;
    if (Object.entries(labels || {}).every(([k, val]) => key.includes(`${k}="${val}"`))) total += v;
  }
  return total;
}

// Per-VU token caches filled from the issuer's GET /token (each VU is its own JS runtime).
const LEEWAY = Number(__ENV.LEEWAY || 60);
const cache = {};

// A token expired just past the leeway, so it is accepted inside expired_grace. Re-minted every 60 s:
// a pre-minted one would leave the grace window after (grace - 30) seconds of a long run.
export function graceToken() {
  return cachedIssuerToken('grace', `grace-${__VU}`, -(LEEWAY + 30), 60).token;
}

// A fresh token signed with whatever key the issuer signs with now; re-fetched every `every` seconds.
export function cachedIssuerToken(slot, sub, ttl, every) {
  const now = Date.now() / 1000;
  const c = cache[slot];
  if (c && now - c.at < every) return c;
  const t = issuerToken(sub, ttl);
  if (t === null) {
    if (c) return c; // keep the previous one; the aux failure is in http_req_failed{expected:aux}
    fail(`the dev issuer gave no token for ${slot}`);
  }
  cache[slot] = { token: t.token, kid: t.kid, at: now };
  return cache[slot];
}
