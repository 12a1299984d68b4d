"""Extension modules for `SIDECAR_COMPILE=1` builds (build_support/backend.py); the rest is in pyproject.toml."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "build_support"))
from backend import COMPILED, compiling

extensions = []
if compiling():
    from mypyc.build import mypycify

    # the type errors that stop a build are the compiled modules' own (mypy checks the whole package in CI)
    extensions = mypycify(
        ["--follow-imports=silent", *(f"sidecar/{name}" for name in COMPILED)], opt_level="3", debug_level="0"
    )
setup(ext_modules=extensions)
