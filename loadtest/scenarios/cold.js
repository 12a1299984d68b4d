// cold: a unique valid token per request, so every request is a token-cache miss and a full RS256
// verification. The runner sizes the set from RATE x DURATION; running out is a failure
// (cold_exhausted), never a silent reuse.
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import { arrival, baseOptions, classThresholds, latency, settings } from '../lib/config.js';
import { send, tokenSet } from '../lib/http.js';

const S = settings('cold');
const cold = tokenSet('cold');
const exhausted = new Counter('cold_exhausted');

export const options = baseOptions({
  scenarios: { cold: arrival(S.num('RATE'), S.str('DURATION')) },
  thresholds: Object.assign(
    classThresholds(['ok']),
    latency('ok', { p95: S.num('P95_MS') }),
    { cold_exhausted: ['count==0'] },
  ),
});

export default function () {
  const i = exec.scenario.iterationInTest;
  if (i >= cold.length) {
    exhausted.add(1);
    return;
  }
  send('ok', cold[i], { name: 'cold' });
}
