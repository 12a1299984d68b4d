#!/usr/bin/env bash
# Regenerate requirements.lock, the image's dependency lock: every runtime dependency of pyproject.toml
# ([project].dependencies), the build backend ([build-system].requires) and the compiler the image's build
# uses (COMPILER in build_support/backend.py), so the image builds the project offline; resolved for
# CPython 3.11 on Linux, pinned, with the sha256 of every file PyPI has for each pin (amd64 and arm64 wheels
# alike). The Dockerfile installs it with `pip install --require-hashes`.
#
#   bash scripts/lock.sh              # after changing dependencies: keeps the pins that still fit
#   bash scripts/lock.sh --upgrade    # move every pin to the newest allowed version
#
# Extra arguments go to `uv pip compile`. tests/test_dockerfile.py checks the lock still satisfies pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
if ! .venv/bin/uv --version 2>/dev/null | grep -qx "uv $UV_VERSION.*"; then
  .venv/bin/python -m pip install -q "uv==$UV_VERSION"
fi

# The build-system requirements and the compiler, read from their files (not copied by hand), as an input.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python - "$work/build-system.in" <<'PY'
import re
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    requires = tomllib.load(f)["build-system"]["requires"]
with open("build_support/backend.py", encoding="utf-8") as f:
    requires.append(re.search(r'^COMPILER = "(.+)"$', f.read(), re.M).group(1))
with open(sys.argv[1], "w", encoding="utf-8") as out:
    out.write("".join(f"{r}\n" for r in requires))
PY
cp pyproject.toml "$work/pyproject.toml"

# Run from the scratch directory so the file's "via" comments name stable inputs, not a temporary path.
# --native-tls: use the system's CA store (as pip does), so a proxy's CA known to the system works too.
out=$PWD/requirements.lock
(cd "$work" && "$OLDPWD/.venv/bin/uv" pip compile --quiet --native-tls \
  --generate-hashes --python-version 3.11 --python-platform linux \
  --custom-compile-command "bash scripts/lock.sh" \
  --output-file "$out" "$@" pyproject.toml build-system.in)
echo "wrote requirements.lock ($(grep -c '==' "$out") pins)"
