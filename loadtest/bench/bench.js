// One benchmark measurement (driven by bench.py; not a pass/fail scenario).
//   MODE=closed: VUS virtual users back to back for DURATION  -> max throughput
//   MODE=open:   RATE requests/s for DURATION (open model)   -> latency at a fixed rate
//   TOKENS=none | warm (10 reused tokens: token-cache hits) | cold (one unique token per request)
//
// k6 must not be the bottleneck: reading a SharedArray element JSON-decodes it (measured: ~90 us for one
// token; direct-to-upstream fell from ~11,500 to ~3,300 req/s when every request read one). So each VU
// copies what it needs into a local array in its init context, before the measured window: warm, the
// 10 tokens; cold, its own disjoint slice of the unique set (one element per VU, a space-joined string
// that takes ~150 ms to read).
import http from 'k6/http';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';
import { sleep } from 'k6';
import { NOT_LOOPBACK, TREND_STATS } from '../lib/config.js';

const TARGET = __ENV.TARGET_URL;
if (!/^http:\/\/127\.\d+\.\d+\.\d+:\d+$/.test(TARGET || '')) throw new Error('TARGET_URL must be http://127.x.x.x:PORT');
const MODE = __ENV.MODE || 'closed';
const TOKENS = __ENV.TOKENS || 'none';
const DURATION = __ENV.DURATION || '10s';
const VUS = Number(__ENV.VUS || 32);
if (TOKENS === 'cold' && MODE !== 'closed') throw new Error('cold tokens are sliced per VU: closed model only');

const shared = TOKENS === 'none' ? null : new SharedArray(`bench-${TOKENS}`, () => {
  const all = JSON.parse(open(`${__ENV.TOKENS_DIR}/${TOKENS === 'warm' ? 'ok' : 'cold'}.json`));
  if (TOKENS === 'warm') return all.slice(0, 10);
  const per = Math.floor(all.length / VUS);
  const slices = [];
  for (let v = 0; v < VUS; v++) slices.push(all.slice(v * per, (v + 1) * per).join(' '));
  return slices;
});
// __VU is 0 only in the init that reads options; real VUs are 1..N
let local = null;
if (shared !== null && __VU > 0) {
  local = TOKENS === 'warm'
    ? Array.from({ length: shared.length }, (_, k) => `Bearer ${shared[k]}`)
    : shared[(__VU - 1) % shared.length].split(' ').map((t) => `Bearer ${t}`);
}
let n = 0;
const exhausted = new Counter('cold_exhausted');

const scenario = MODE === 'open'
  ? {
    executor: 'constant-arrival-rate', rate: Number(__ENV.RATE || 1000), timeUnit: '1s', duration: DURATION,
    preAllocatedVUs: 50, maxVUs: 400, gracefulStop: '5s',
  }
  : { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: '5s' };

export const options = {
  scenarios: { bench: scenario },
  summaryTrendStats: TREND_STATS,
  discardResponseBodies: true,
  blacklistIPs: NOT_LOOPBACK,
};

const url = `${TARGET}/api/resource`;
const plain = { timeout: '10s', tags: { name: 'bench' } };

export default function () {
  if (shared === null) {
    http.get(url, plain);
    return;
  }
  let auth;
  if (TOKENS === 'warm') {
    auth = local[n % local.length];
  } else if (n < local.length) {
    auth = local[n];
  } else {
    exhausted.add(1); // this VU ran out of unique tokens: idle, never reuse one
    sleep(1);
    return;
  }
  n += 1;
  http.get(url, { timeout: '10s', tags: { name: 'bench' }, headers: { Authorization: auth } });
}
