// soak: the `mixed` traffic at a moderate rate for a long time (default 30 min). The runner samples
// the sidecar's RSS from /proc during the run, reports start/max/end, and fails the run when the max
// exceeds RSS_LIMIT_MB. Thresholds: every class answered correctly, p95 of valid requests.
import exec from 'k6/execution';
import { arrival, baseOptions, classThresholds, latency, MIX, picker, settings } from '../lib/config.js';
import { sendClass, tokenPool } from '../lib/http.js';

const S = settings('soak');
const sets = {};
for (const c of Object.keys(MIX)) if (!['public', 'missing_token', 'multiple_tokens', 'in_grace'].includes(c)) sets[c] = tokenPool(c);
const pick = picker(MIX);

export const options = baseOptions({
  scenarios: { soak: arrival(S.num('RATE'), S.str('DURATION')) },
  thresholds: Object.assign(classThresholds(Object.keys(MIX)), latency('ok', { p95: S.num('P95_MS') })),
});

export default function () {
  const i = exec.scenario.iterationInTest;
  sendClass(pick(i), sets, Math.floor(i / 100));
}
