// smoke: one VU sends every class of request a few times and checks each answer exactly
// (status, JSON `reason`, WWW-Authenticate, headers that reached the app). Seconds long.
import exec from 'k6/execution';
import { baseOptions, classThresholds, latency, settings, SIDECAR_CLASSES } from '../lib/config.js';
import { aux, ADMIN, send, sendClass, tokenPool, tokenSet } from '../lib/http.js';

const S = settings('smoke');
const OK_COUNT = tokenSet('ok').length; // the same SharedArray the `ok` pool reads
const sets = {};
for (const c of ['ok', 'expired', 'bad_signature', 'unknown_kid', 'wrong_aud', 'wrong_iss', 'not_yet_valid',
  'unsupported_alg', 'malformed']) sets[c] = tokenPool(c);

export const options = baseOptions({
  scenarios: {
    smoke: { executor: 'per-vu-iterations', vus: S.num('VUS'), iterations: S.num('ITERATIONS'), maxDuration: '60s' },
  },
  thresholds: Object.assign(
    classThresholds([...SIDECAR_CLASSES, 'preflight_ok']),
    latency('ok', { p95: S.num('P95_MS', 500) }),
    { 'http_req_failed{expected:aux}': ['rate==0'] },
  ),
});

export default function () {
  const i = exec.scenario.iterationInTest;
  aux('GET', `${ADMIN}/readyz`, 'admin /readyz');
  // the valid token's `sub` must reach the app as X-Auth-Subject
  send('ok', sets.ok(i), { subject: `user-${i % OK_COUNT}` });
  for (const cls of SIDECAR_CLASSES) if (cls !== 'ok') sendClass(cls, sets, i);
  send('preflight_ok', null, {
    method: 'OPTIONS',
    headers: { Origin: 'http://localhost:3000', 'Access-Control-Request-Method': 'GET', 'Access-Control-Request-Headers': 'authorization' },
  });
}
