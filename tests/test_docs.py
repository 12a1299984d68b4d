"""The README and docs/ are checked against the code, so they cannot drift from the closed lists, and their
recipes run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import FLAGS
from sidecar.config import Config, Cors, Decision, Jwks, Limits, Provider
from sidecar.config.model import SECTIONS, fields_of
from sidecar.errors import all_reasons
from sidecar.metrics import Metrics
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOC_FILES = sorted((ROOT / "docs").glob("*.md"))
# The reference lives in docs/; a row added to the README by an older branch still counts.
DOCS = "\n".join([README, *(p.read_text() for p in DOC_FILES)])
# Written on other branches of this release; linked from docs/security.md before they are merged.
PENDING = {"gateways.md", "workers.md", "image.md"}


def test_the_failure_reason_table_matches_the_closed_list() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \| (`\w+`|—) \|", DOCS, re.M)
    documented = {name: (int(status), err.strip("`")) for name, status, err in rows}
    for cls in all_reasons():
        assert documented.get(cls.reason) == (cls.status, cls.error or "—"), cls.reason


def test_every_exported_metric_is_documented() -> None:
    m = Metrics()
    m.provider("default")
    for metric in m.registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        assert f"| `{name}` | {metric.type} |" in DOCS, name


def test_every_flag_and_its_environment_twin_are_documented() -> None:
    for flag in FLAGS:
        assert f"`--{flag.name}`" in DOCS and f"`{flag.env}`" in DOCS, flag.name


def test_every_config_key_is_documented() -> None:
    for section, cls in SECTIONS.items():
        prefix = "providers[]." if cls is Provider else f"{section}." if section else ""
        for key in fields_of(cls):
            if key not in SECTIONS:
                assert f"`{prefix}{key}`" in DOCS, prefix + key
    assert {Config, Provider, Cors, Jwks, Limits, Decision} <= set(SECTIONS.values())


def test_every_alert_the_chart_ships_is_documented() -> None:
    rules = (ROOT / "helm" / "templates" / "prometheusrule.yaml").read_text()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert alerts
    metrics_doc = (ROOT / "docs" / "metrics.md").read_text()
    for alert in alerts:
        assert f"| `{alert}` |" in metrics_doc, alert


def test_the_readme_is_a_front_page_with_the_two_commands_first() -> None:
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/sidecar demo",
        "bash scripts/test.sh",
    ]
    assert README.index("```sh") < README.index("## ")  # before any section
    assert len(README) < 8000, "the reference belongs in docs/"


@pytest.mark.parametrize("doc", [ROOT / "README.md", *DOC_FILES], ids=lambda p: p.name)
def test_links_stay_inside_the_repository_and_resolve(doc: Path) -> None:
    text = doc.read_text()
    assert "../shared" not in text, "users do not have ../shared"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if resolved.name in PENDING and resolved.parent == ROOT / "docs":
            continue
        assert resolved.exists(), f"{doc.name}: {target}"
        assert ROOT in resolved.parents or resolved == ROOT, f"{doc.name}: {target} leaves the repository"
        if anchor and resolved.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{doc.name}: {target}"


def _sidecar_commands(text: str) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    lines = [line.split("  #")[0].strip() for b in blocks for line in b.replace("\\\n", " ").splitlines()]
    return [line for line in lines if "sidecar check-config" in line or line.startswith("sidecar --version")]


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_the_check_config_recipes_in_the_docs_pass(doc: Path) -> None:
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    for command in _sidecar_commands(doc.read_text()):
        r = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{command}\n{r.stderr}"


def test_the_documented_check_config_error_example_is_what_it_prints() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    example = re.search(r"```\n\$ (sidecar check-config .*?)\n(.*?)```", doc, re.S)
    assert example
    argv = shlex.split(example.group(1))[1:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    r = subprocess.run([sys.executable, "-m", "sidecar", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == example.group(2)


def test_the_development_recipes_run_as_written(tmp_path: Path) -> None:
    """The README's Development block, on free ports instead of the fixed ones (other tests may hold those),
    and without the `pip install` line: this test already runs in that environment."""
    block = README.split("## Development", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    ports = {old: str(free_port()) for old in ("9000", "8080", "8000", "9901")}
    config = (ROOT / "config" / "dev-issuer.yaml").read_text()
    for old, new in ports.items():
        block = re.sub(rf"\b{old}\b", new, block)
        config = re.sub(rf"\b{old}\b", new, config)
    tmp = tmp_path / "dev-issuer.yaml"
    tmp.write_text(config)
    script = "\n".join(line for line in block.splitlines() if not line.startswith(".venv/bin/pip install"))
    script = script.replace("config/dev-issuer.yaml", str(tmp))
    script = script.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")
    r = subprocess.run(
        # the trap stops the background servers even when a line fails
        ["bash", "-c", "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "passed" in r.stdout  # the pytest line
    assert '"path": "/api/hello"' in r.stdout and '"Authorization", "Bearer ' in r.stdout, r.stdout[-2000:]
