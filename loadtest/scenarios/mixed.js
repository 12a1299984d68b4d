// mixed: valid traffic plus every failure reason in fixed proportions (config.js MIX, chosen
// deterministically by iteration number). Each class must get its own status and `reason`:
// http_req_failed{expected:X} == 0, checks{expected:X} == 1, and at least one request per class.
import exec from 'k6/execution';
import { arrival, baseOptions, classThresholds, latency, MIX, picker, settings } from '../lib/config.js';
import { sendClass, tokenPool } from '../lib/http.js';

const S = settings('mixed');
const sets = {};
for (const c of Object.keys(MIX)) if (!['public', 'missing_token', 'multiple_tokens', 'in_grace'].includes(c)) sets[c] = tokenPool(c);
const pick = picker(MIX);

export const options = baseOptions({
  scenarios: { mixed: arrival(S.num('RATE'), S.str('DURATION')) },
  thresholds: Object.assign(classThresholds(Object.keys(MIX)), latency('ok', { p95: S.num('P95_MS') })),
});

export default function () {
  const i = exec.scenario.iterationInTest;
  sendClass(pick(i), sets, Math.floor(i / 100));
}
