// steady: valid tokens (a reused set, so mostly token-cache hits) at a fixed arrival rate.
// Asserts zero failures and the p50/p95/p99 latency bounds; any dropped iteration fails the run
// (it means the sidecar could not keep the rate).
import exec from 'k6/execution';
import { arrival, baseOptions, classThresholds, latency, settings } from '../lib/config.js';
import { send, tokenPool } from '../lib/http.js';

const S = settings('steady');
const ok = tokenPool('ok');

export const options = baseOptions({
  scenarios: { steady: arrival(S.num('RATE'), S.str('DURATION')) },
  thresholds: Object.assign(
    classThresholds(['ok']),
    latency('ok', { p50: S.num('P50_MS'), p95: S.num('P95_MS'), p99: S.num('P99_MS') }),
    { dropped_iterations: ['count==0'] },
  ),
});

export default function () {
  send('ok', ok(exec.scenario.iterationInTest));
}
