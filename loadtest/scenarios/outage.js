// outage: valid traffic while the IdP's JWKS endpoint fails (OUTAGE_MODE: 500 | garbage | empty | hang)
// from DURATION/4 to 3*DURATION/4. The runner starts the sidecar with --jwks-refresh 2s so it really
// tries to refresh during the outage; the last good keys must keep being used (stale-if-error).
//
// Half the requests reuse pre-minted tokens (token-cache hits); the other half use per-VU tokens from
// the issuer's GET /token (minting still works during a JWKS outage) re-fetched every TOKEN_REFRESH_S
// seconds, so full signature verification with the retained keys is exercised too.
// Asserts: zero failed valid requests; the sidecar did see failed fetches during the outage
// (outage_observed == 1, read from its /metrics); it stayed ready (GET /readyz == 200 during the
// outage); and it fetched successfully again after the outage ended (recovery_observed == 1).
import exec from 'k6/execution';
import { sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { arrival, baseOptions, classThresholds, control, fmt, latency, seconds, settings } from '../lib/config.js';
import { ADMIN, adminMetrics, aux, cachedIssuerToken, ISSUER, metricSum, send, tokenPool } from '../lib/http.js';

const S = settings('outage');
const pooled = tokenPool('ok');
const total = seconds(S.str('DURATION'));
const mode = S.str('OUTAGE_MODE');
const refresh = S.num('TOKEN_REFRESH_S', 1);
const observed = new Counter('outage_observed');
const recovered = new Counter('recovery_observed');
const notReady = new Counter('not_ready_during_outage');

export const options = baseOptions({
  scenarios: {
    traffic: arrival(S.num('RATE'), S.str('DURATION'), { exec: 'traffic' }),
    outage: control('outage', fmt(total / 4), fmt(total / 2 + 40)),
  },
  thresholds: Object.assign(
    classThresholds(['ok']),
    latency('ok', { p95: S.num('P95_MS') }),
    { outage_observed: ['count==1'], recovery_observed: ['count==1'], not_ready_during_outage: ['count==0'] },
  ),
});

export function traffic() {
  const i = exec.scenario.iterationInTest;
  if (i % 2 === 0) {
    send('ok', pooled(i / 2), { name: 'ok (pooled)' });
  } else {
    send('ok', cachedIssuerToken('fresh', `fresh-${__VU}`, 3600, refresh).token, { name: 'ok (fresh)' });
  }
}

const failures = (m) => metricSum(m, 'sidecar_jwks_fetches_total') - metricSum(m, 'sidecar_jwks_fetches_total', { result: 'success' });
const successes = (m) => metricSum(m, 'sidecar_jwks_fetches_total', { result: 'success' });

export function outage() {
  const before = failures(adminMetrics());
  aux('POST', `${ISSUER}/outage?mode=${mode}`, 'issuer /outage');
  console.log(`JWKS outage (${mode}) started; failed fetches so far: ${before}`);
  const until = Date.now() + (total / 2) * 1000;
  let seen = false;
  while (Date.now() < until) {
    sleep(Math.min(1, Math.max(0, (until - Date.now()) / 1000)));
    const ready = aux('GET', `${ADMIN}/readyz`, 'admin /readyz');
    if (ready.status !== 200) notReady.add(1);
    if (!seen && failures(adminMetrics()) > before) seen = true;
  }
  if (seen) observed.add(1);
  else console.error('the sidecar made no failed JWKS fetch during the outage: was --jwks-refresh short?');
  const afterOutage = successes(adminMetrics());
  aux('POST', `${ISSUER}/outage?mode=off`, 'issuer /outage');
  console.log('JWKS outage ended');
  for (let waited = 0; waited < 30; waited += 0.5) {
    if (successes(adminMetrics()) > afterOutage) {
      recovered.add(1);
      return;
    }
    sleep(0.5);
  }
  console.error('the sidecar did not fetch the JWKS successfully within 30 s after the outage');
}
