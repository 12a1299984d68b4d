// stress: ramping arrival rate from START_RATE to RATE over 80 % of DURATION, then held. Past
// saturation the open model shows it as latency and dropped iterations; the sidecar must still answer
// every request correctly (failure rate < 1 %). Read the achieved rate in the report.
import exec from 'k6/execution';
import { baseOptions, fmt, latency, seconds, settings } from '../lib/config.js';
import { send, tokenPool } from '../lib/http.js';

const S = settings('stress');
const ok = tokenPool('ok');
const total = seconds(S.str('DURATION'));
const peak = S.num('RATE');

export const options = baseOptions({
  scenarios: {
    stress: {
      executor: 'ramping-arrival-rate',
      startRate: S.num('START_RATE'),
      timeUnit: '1s',
      preAllocatedVUs: Number(__ENV.PRE_VUS || 50),
      maxVUs: Number(__ENV.MAX_VUS || 400),
      stages: [
        { target: peak, duration: fmt(total * 0.8) },
        { target: peak, duration: fmt(total * 0.2) },
      ],
      gracefulStop: '15s',
    },
  },
  thresholds: Object.assign(
    {
      'http_req_failed{expected:ok}': ['rate<0.01'],
      'checks{expected:ok}': ['rate>0.99'],
      'http_reqs{expected:ok}': ['count>0'],
    },
    latency('ok', { p95: S.num('P95_MS') }),
  ),
});

export default function () {
  send('ok', ok(exec.scenario.iterationInTest), { timeout: '30s' });
}
