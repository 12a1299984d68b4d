"""The compiled build (SIDECAR_COMPILE=1, build_support/backend.py): what it compiles, and, when the suite runs
on it (scripts/test-compiled.sh), that every listed module really is the extension."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import tomllib
from types import ModuleType

import pytest

from sidecar.app import compiled
from tests.support import ROOT


def backend() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sidecar_build_backend", ROOT / "build_support" / "backend.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def names() -> list[str]:
    return ["sidecar." + path.removesuffix(".py").replace("/", ".") for path in backend().COMPILED]


def test_every_module_the_build_compiles_exists_once() -> None:
    listed = backend().COMPILED
    assert len(set(listed)) == len(listed)
    for path in listed:
        assert (ROOT / "sidecar" / path).is_file(), path


def test_the_request_path_is_compiled_every_module_of_the_lean_engine_included() -> None:
    lean = {f"sidecar.http.{p.stem}" for p in (ROOT / "sidecar" / "http").glob("*.py") if p.stem != "__init__"}
    assert lean <= set(names())


def test_the_compiler_is_asked_for_only_when_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    b = backend()
    seen: list[str | None] = []

    def setuptools_answer(_: object) -> list[str]:  # it runs setup.py, which must not need the compiler yet
        seen.append(os.environ.get("SIDECAR_COMPILE"))
        return ["wheel"]

    monkeypatch.delenv("SIDECAR_COMPILE", raising=False)
    assert b._with_compiler(setuptools_answer, None) == ["wheel"]
    monkeypatch.setenv("SIDECAR_COMPILE", "1")
    asked = b._with_compiler(setuptools_answer, None)
    assert asked[:2] == ["wheel", b.COMPILER]
    assert set(asked[2:]) == set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert seen == [None, None] and os.environ["SIDECAR_COMPILE"] == "1"
    with pytest.raises(SystemExit, match="not for an editable install"):
        b.get_requires_for_build_editable()  # its extensions would hide the source being edited
    assert b.COMPILER.startswith("mypy==")  # pinned: the same compiler, the same extensions


@pytest.mark.skipif(os.environ.get("SIDECAR_EXPECT_COMPILED") != "1", reason="the suite runs on Python source")
def test_the_suite_runs_on_the_extensions() -> None:
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    source = [n for n in names() if not (importlib.import_module(n).__file__ or "").endswith(suffixes)]
    assert not source, f"imported as Python source, not compiled: {source}"
    assert compiled() == len(names())


def test_the_start_up_line_says_how_many_modules_run_compiled() -> None:
    for name in names():
        importlib.import_module(name)
    expected = len(names()) if os.environ.get("SIDECAR_EXPECT_COMPILED") == "1" else 0
    assert compiled() == expected
