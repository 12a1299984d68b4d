// Option presets and thresholds shared by every scenario.
//
// Values come from the environment first (k6 passes the process environment as __ENV, and `-e K=V`
// works too), then from this scenario's entry in defaults.json (the defaults for a real run), then from
// the fallback given at the call site. run.sh reads the same defaults.json.

const DEFAULTS = JSON.parse(open('./defaults.json'));

export const TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'];

// Every request the sidecar answers carries an `expected` tag naming its class; these are the classes
// whose answers are the sidecar's to get right. `aux` (issuer, admin port) is never thresholded here.
export const SIDECAR_CLASSES = [
  'ok', 'in_grace', 'public', 'expired', 'bad_signature', 'unknown_kid', 'wrong_aud', 'wrong_iss',
  'not_yet_valid', 'unsupported_alg', 'malformed', 'missing_token', 'multiple_tokens',
];

export function settings(scenario) {
  const d = DEFAULTS[scenario] || {};
  const str = (key, fallback) => {
    const v = __ENV[key];
    if (v !== undefined && v !== '') return String(v);
    if (d[key] !== undefined) return String(d[key]);
    return fallback === undefined ? undefined : String(fallback);
  };
  const num = (key, fallback) => {
    const v = Number(str(key, fallback));
    if (!Number.isFinite(v)) throw new Error(`${key} must be a number, got ${str(key, fallback)}`);
    return v;
  };
  return { str, num };
}

// "90s", "1m30s", "2m", "1h", "500ms", or a bare number of seconds -> seconds
export function seconds(d) {
  const s = String(d).trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  let total = 0;
  let seen = '';
  let m;
  while ((m = re.exec(s)) !== null) {
    total += Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]];
    seen += m[0];
  }
  if (seen !== s || seen === '') throw new Error(`not a duration: ${d}`);
  return total;
}

export function fmt(secs) {
  return `${Math.max(0, Math.round(secs * 1000))}ms`;
}

export const NOT_LOOPBACK = [
  '0.0.0.0/2', '64.0.0.0/3', '96.0.0.0/4', '112.0.0.0/5', '120.0.0.0/6', '124.0.0.0/7', '126.0.0.0/8',
  '128.0.0.0/1', '::/0',
];

export function baseOptions(extra) {
  return Object.assign(
    {
      summaryTrendStats: TREND_STATS,
      userAgent: 'jwt-sidecar-loadtest/1',
      setupTimeout: '60s',
      teardownTimeout: '30s',
      // Safety net: k6 may reach 127.0.0.0/8 only. Every other IPv4 address and all of IPv6 are refused.
      blacklistIPs: NOT_LOOPBACK,
      thresholds: {},
    },
    extra,
  );
}

// Per class: no request failed (each request declares its expected status via responseCallback),
// every check passed, and the class was actually exercised (a threshold on a class with no samples
// would pass vacuously, so count>0 is explicit).
export function classThresholds(classes) {
  const t = {};
  for (const c of classes) {
    t[`http_req_failed{expected:${c}}`] = ['rate==0'];
    t[`checks{expected:${c}}`] = ['rate==1'];
    t[`http_reqs{expected:${c}}`] = ['count>0'];
  }
  return t;
}

// Latency bounds on one class, e.g. latency('ok', {p50: 10, p95: 50})
export function latency(cls, bounds) {
  const rules = [];
  if (bounds.p50) rules.push(`med<${bounds.p50}`);
  if (bounds.p95) rules.push(`p(95)<${bounds.p95}`);
  if (bounds.p99) rules.push(`p(99)<${bounds.p99}`);
  return rules.length ? { [`http_req_duration{expected:${cls}}`]: rules } : {};
}

// An open-model scenario: `rate` iterations per second for `duration`, whatever the latency.
export function arrival(rate, duration, more) {
  const vus = Math.max(10, Math.ceil(rate / 10));
  return Object.assign(
    {
      executor: 'constant-arrival-rate',
      rate,
      timeUnit: '1s',
      duration,
      preAllocatedVUs: Number(__ENV.PRE_VUS || vus),
      maxVUs: Number(__ENV.MAX_VUS || Math.min(1000, Math.max(20, vus * 5))),
      gracefulStop: '10s',
    },
    more || {},
  );
}

// A one-shot control scenario (rotate keys, start an outage) that runs once at `startTime`.
export function control(exec, startTime, maxDuration) {
  return { executor: 'per-vu-iterations', vus: 1, iterations: 1, exec, startTime, maxDuration };
}

// Weighted, deterministic class selection: iteration i gets table[i % table.length].
export function picker(weights) {
  const table = [];
  for (const [cls, w] of Object.entries(weights)) for (let i = 0; i < w; i++) table.push(cls);
  return (i) => table[i % table.length];
}

// Proportions of the `mixed` and `soak` traffic (percent).
export const MIX = {
  ok: 60, in_grace: 4, public: 4, expired: 4, bad_signature: 3, unknown_kid: 3, wrong_aud: 3, wrong_iss: 3,
  not_yet_valid: 3, unsupported_alg: 3, malformed: 4, missing_token: 3, multiple_tokens: 3,
};
