# syntax=docker/dockerfile:1
#
# jwt-sidecar container image. Build (the tag is the Helm chart's default image; tests check they agree):
#
#   docker build -t ghcr.io/jwt-sidecar/jwt-sidecar:0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# or `bash scripts/build.sh`, which fills in every build argument and uses podman when no Docker daemon answers.
#
# Layers, from the bottom: the base; /opt/venv, the dependencies installed from requirements.lock (pinned,
# hash-checked) and nothing else; /opt/app, this project (a few hundred kB). A change under sidecar/ or to
# README.md rebuilds only the last one, offline, and a node that has the previous version pulls only that.
# Regenerate the lock with `bash scripts/lock.sh` after changing dependencies in pyproject.toml.
#
# Runtime contract:
#   * runs as the fixed non-root UID/GID 10001
#   * works with a read-only root filesystem; the only writable path is the /tmp volume
#   * config file at /etc/sidecar/config.yaml (mount a ConfigMap there)
#   * proxy on :8000, admin (/healthz, /readyz, /metrics) on :9901 unless configured otherwise;
#     the HEALTHCHECK asks the admin address the running sidecar resolved (`sidecar healthcheck`)
#   * SIGTERM: readiness turns 503 at once, in-flight requests drain for up to limits.drain_timeout
#     (default 20 s), then exit 0. `docker stop` kills after 10 s: run with --stop-timeout 30 (docs/image.md).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --------------------------------------------------------------------------------------------------
# The dependencies, from the lock file alone: cached until requirements.lock (or the base) changes.
FROM ${PYTHON_IMAGE} AS deps

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY requirements.lock /tmp/requirements.lock

# --only-binary: every pin ships manylinux wheels for CPython 3.11 (amd64 and arm64), so no compiler is
# needed and a missing wheel fails the build instead of compiling. The .pth file puts /opt/app (the
# project, next stage) on the venv's path.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: --no-deps \
        -r /tmp/requirements.lock \
 && /opt/venv/bin/python -c "import sysconfig, pathlib; pathlib.Path(sysconfig.get_path('purelib'), 'jwt_sidecar_app.pth').write_text('/opt/app\n')"

# --------------------------------------------------------------------------------------------------
# The project, installed with the locked build backend and compiled: the modules every request runs become
# C extensions (mypyc, from the same source; build_support/backend.py lists them). A C compiler and Python's
# headers live in this stage only (the official base has the headers; a Debian-built base needs python3-dev).
FROM deps AS app

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && { [ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("INCLUDEPY"))')/Python.h" ] \
      || apt-get install -y --no-install-recommends python3-dev; } \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY build_support ./build_support
COPY sidecar ./sidecar
RUN SIDECAR_COMPILE=1 /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps --no-build-isolation \
        --target /opt/app . \
 && /opt/venv/bin/python -I -c "import sidecar.gate as m; assert m.__file__.endswith('.so'), m.__file__"

# --------------------------------------------------------------------------------------------------
# The runtime venv: the dependencies without the installer, the build backend and the compiler.
FROM deps AS venv

RUN /opt/venv/bin/pip uninstall --yes setuptools pip mypy mypy-extensions librt ast-serialize pathspec

# --------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only; pip precompiled the bytecode at install.
ENV PATH=/opt/app/bin:/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    TMPDIR=/tmp

RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sidecar

COPY --from=venv /opt/venv /opt/venv
COPY --from=app /opt/app /opt/app

# Build arguments only from here on: a new revision or date changes labels, never a cached layer.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/jwt-sidecar/jwt-sidecar

LABEL org.opencontainers.image.title="jwt-sidecar" \
      org.opencontainers.image.description="JWT-validating reverse proxy to run beside your app in a Kubernetes pod" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# The only writable path. Kubernetes: mount an emptyDir here (the Helm chart does).
VOLUME ["/tmp"]
WORKDIR /tmp
USER 10001:10001

EXPOSE 8000 9901
STOPSIGNAL SIGTERM

# For docker/podman; Kubernetes ignores HEALTHCHECK and uses the chart's probes instead. `sidecar healthcheck`
# reads the running `sidecar run`'s flags, environment and config file, so a moved admin port is followed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["sidecar", "healthcheck", "--timeout", "3"]

ENTRYPOINT ["sidecar"]
CMD ["run", "--config", "/etc/sidecar/config.yaml"]
