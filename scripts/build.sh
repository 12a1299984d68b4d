#!/usr/bin/env bash
# Build the image as the README says, with every label filled in:
#   bash scripts/build.sh [extra build args...]
# Tag: the Helm chart's default image (sidecar.image.repository:tag in helm/values.yaml), unless IMAGE is set.
# Engine: docker when its daemon answers, else podman (with --format docker, which keeps the HEALTHCHECK).
# PYTHON_IMAGE, if set, replaces the base image (CI here builds on a local stand-in: .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
image=${IMAGE:-ghcr.io/jwt-sidecar/jwt-sidecar:$version}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)

args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created")
# The same values as labels of the build itself: buildah's layer cache reuses a cached LABEL step whose ARG
# values changed (a rebuild kept the previous revision), while --label always applies to the new image.
label=org.opencontainers.image
args+=(--label "$label.version=$version" --label "$label.revision=$revision" --label "$label.created=$created")
[ -z "${PYTHON_IMAGE:-}" ] || args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
if [ -n "${ENGINE:-}" ]; then
  engine=$ENGINE
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=docker
else
  engine=podman
fi
[ "$engine" != podman ] || args+=(--format docker)
"$engine" build "${args[@]}" -t "$image" "$@" .
echo "$image"
