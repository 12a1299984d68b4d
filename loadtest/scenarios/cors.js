// cors: what a browser does. Each iteration is a preflight (OPTIONS with Origin and
// Access-Control-Request-*) followed by the actual request with Origin + Authorization, from the allowed
// origin. Every 5th iteration also sends a preflight from a foreign origin (403 cors_rejected, no
// Access-Control-Allow-Origin), a real request from a foreign origin (forwarded, but no ACAO), and a
// request without a token from the allowed origin (the 401 must carry ACAO so the page can read it).
import exec from 'k6/execution';
import { arrival, baseOptions, classThresholds, latency, settings } from '../lib/config.js';
import { ORIGIN, send, tokenPool } from '../lib/http.js';

const S = settings('cors');
const ok = tokenPool('ok');
const FOREIGN = 'https://evil.example';

export const options = baseOptions({
  scenarios: { cors: arrival(S.num('RATE'), S.str('DURATION')) },
  thresholds: Object.assign(
    classThresholds(['preflight_ok', 'cors_ok', 'preflight_rejected', 'cors_foreign', 'missing_token']),
    latency('preflight_ok', { p95: S.num('P95_MS') }),
    latency('cors_ok', { p95: S.num('P95_MS') }),
  ),
});

const acao = (r) => r.headers['Access-Control-Allow-Origin'];
const varyOrigin = (r) => /(^|,\s*)origin(\s*,|$)/i.test(r.headers.Vary || '');

function preflight(cls, origin, extraChecks) {
  return send(cls, null, {
    method: 'OPTIONS',
    path: '/api/items',
    headers: { Origin: origin, 'Access-Control-Request-Method': 'PUT', 'Access-Control-Request-Headers': 'authorization,content-type' },
    extraChecks,
  });
}

export default function () {
  const i = exec.scenario.iterationInTest;
  const token = ok(i);
  preflight('preflight_ok', ORIGIN, {
    'preflight_ok: ACAO is the origin': (r) => acao(r) === ORIGIN,
    'preflight_ok: allows PUT': (r) => /\bPUT\b/.test(r.headers['Access-Control-Allow-Methods'] || ''),
    'preflight_ok: allows authorization': (r) => /authorization/i.test(r.headers['Access-Control-Allow-Headers'] || ''),
    'preflight_ok: has max-age': (r) => Number(r.headers['Access-Control-Max-Age']) > 0,
  });
  send('cors_ok', token, {
    method: 'PUT',
    path: '/api/items',
    payload: '{"name":"x"}',
    headers: { Origin: ORIGIN, 'Content-Type': 'application/json' },
    extraChecks: {
      'cors_ok: ACAO is the origin': (r) => acao(r) === ORIGIN,
      'cors_ok: Vary has Origin': varyOrigin,
    },
  });
  if (i % 5 !== 0) return;
  preflight('preflight_rejected', FOREIGN, { 'preflight_rejected: no ACAO': (r) => acao(r) === undefined });
  send('cors_foreign', token, {
    headers: { Origin: FOREIGN },
    extraChecks: { 'cors_foreign: no ACAO': (r) => acao(r) === undefined, 'cors_foreign: Vary has Origin': varyOrigin },
  });
  send('missing_token', null, {
    headers: { Origin: ORIGIN },
    extraChecks: { 'missing_token: 401 readable by the page (ACAO)': (r) => acao(r) === ORIGIN },
  });
}
