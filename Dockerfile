# syntax=docker/dockerfile:1
#
# jwt-sidecar container image.
#
#   docker build -t jwt-sidecar:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Stage 1 builds a wheel from this checkout and installs it with its dependencies into a
# virtualenv at /opt/venv. Stage 2 copies only that virtualenv onto a clean slim Python base:
# no compilers, no build tools, no pip in the venv, no source tree.
#
# Runtime contract:
#   * runs as the fixed non-root UID/GID 10001
#   * works with a read-only root filesystem; the only writable path is the /tmp volume
#   * config file at /etc/sidecar/config.yaml (mount a ConfigMap there)
#   * proxy on :8000, admin (/healthz, /readyz, /metrics) on :9901
#   * SIGTERM: readiness turns 503 at once, in-flight requests drain, then exit 0

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar

# All runtime dependencies ship manylinux wheels for CPython 3.11 (amd64 and arm64), so no compiler
# is needed here either; --only-binary makes a missing wheel fail the build instead of compiling.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
 && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: /tmp/wheels/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

# --------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="jwt-sidecar" \
      org.opencontainers.image.description="JWT-validating reverse proxy to run beside your app in a Kubernetes pod" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only; pip precompiled the bytecode in the builder.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    TMPDIR=/tmp

RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sidecar

COPY --from=builder /opt/venv /opt/venv

# The only writable path. Kubernetes: mount an emptyDir here (the Helm chart does).
VOLUME ["/tmp"]
WORKDIR /tmp
USER 10001:10001

EXPOSE 8000 9901

# For plain `docker run`; Kubernetes ignores HEALTHCHECK and uses the chart's probes instead.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2)"]

ENTRYPOINT ["sidecar"]
CMD ["run", "--config", "/etc/sidecar/config.yaml"]
