"""The build backend: setuptools', plus mypyc when SIDECAR_COMPILE=1.

A plain `pip install .` installs the package as Python source. `SIDECAR_COMPILE=1 pip install .` (needs a C
compiler and Python's headers) also compiles the modules every proxied request runs through, listed in
COMPILED, into C extensions with mypyc, from the same source and type hints: the same code, about a third
fewer instructions per request (docs/performance.md). The image is built this way. The .py files are
installed beside the extensions, which Python imports first.

Compiling asks for mypy (and the runtime dependencies, whose types it reads) in the build environment only
then: a plain install downloads no compiler. An editable install (-e) is never compiled: the extensions
would hide every edit made to the source.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the PEP 517 hooks this module does not change)

COMPILER = "mypy==2.4.1"
# the modules of the proxy listener's request path (sidecar/http/) and what they call for every request
COMPILED = (
    "http/server.py",
    "http/upstream.py",
    "http/framing.py",
    "http/tunnel.py",
    "http/outbox.py",
    "gate.py",
    "authorize.py",
    "extract.py",
    "verify.py",
    "token_cache.py",
    "keys/view.py",
    "jwks.py",
    "rules.py",
    "headers.py",
    "scrub.py",
    "override.py",
    "formbody.py",
    "cors.py",
    "connlimits.py",
    "responses.py",
    "metrics.py",
    "clock.py",
    "state.py",
    "conntimer.py",
)


def compiling() -> bool:
    return os.environ.get("SIDECAR_COMPILE", "") == "1"


Settings = dict[str, Any] | None


def _with_compiler(requires: Callable[[Settings], list[str]], settings: Settings) -> list[str]:
    if not compiling():
        return requires(settings)
    # setuptools runs setup.py to answer, before the compiler is installed: it answers for a plain build
    os.environ.pop("SIDECAR_COMPILE")
    try:
        return [*requires(settings), COMPILER, *_dependencies()]
    finally:
        os.environ["SIDECAR_COMPILE"] = "1"


def _dependencies() -> list[str]:
    """The runtime dependencies, so that the compiler sees their types in every build: what it compiles
    (and the type checks it builds in) is then the same as in the image, where they are installed."""
    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def get_requires_for_build_wheel(config_settings: Settings = None) -> list[str]:
    return _with_compiler(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: Settings = None) -> list[str]:
    if compiling():
        # the extensions would sit beside the source and hide every edit made to it
        raise SystemExit("SIDECAR_COMPILE=1 is for `pip install .`, not for an editable install (-e)")
    return _setuptools.get_requires_for_build_editable(config_settings)
