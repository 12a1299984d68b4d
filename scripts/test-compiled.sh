#!/usr/bin/env bash
# The tests again, on the compiled build the image runs (SIDECAR_COMPILE=1: build_support/backend.py).
# A copy of the working tree gets the C extensions beside its .py files, built by pip as an install builds
# them, and pytest runs in that copy: every test, and every process a test starts, imports the compiled
# modules (tests/test_compiled.py fails the run if one was imported as source).
#
#   bash scripts/test-compiled.sh [pytest args]    # after scripts/test.sh made .venv; needs a C compiler
#
# scripts/test.sh runs it after the main suite. The build fetches setuptools, mypy (the compiler) and the
# runtime dependencies (whose types the compiler reads) from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/tree"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null \
  | tar -xf - -C "$work/tree"
echo "compiling the request path (mypyc)..."
SIDECAR_COMPILE=1 .venv/bin/python -m pip install -q --no-deps --target "$work/built" "$work/tree"
(cd "$work/built" && find . -name '*.so' -exec cp --parents {} "$work/tree/" \;)
cd "$work/tree"
SIDECAR_EXPECT_COMPILED=1 PYTHONPATH="$work/tree" "$root/.venv/bin/pytest" -q -p no:cacheprovider "$@"
