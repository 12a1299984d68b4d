"""The README's tables are checked against the code, so the docs cannot drift from the closed lists."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.cli import FLAGS
from sidecar.config import Config, Cors, Decision, Jwks, Limits, Provider
from sidecar.errors import all_reasons
from sidecar.metrics import Metrics

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_failure_reason_table_matches_the_closed_list() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \| (`\w+`|—) \|", README, re.M)
    documented = {name: (int(status), err.strip("`")) for name, status, err in rows}
    for cls in all_reasons():
        assert documented.get(cls.reason) == (cls.status, cls.error or "—"), cls.reason


def test_every_exported_metric_is_documented() -> None:
    m = Metrics()
    m.provider("default")
    for metric in m.registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        assert f"| `{name}` | {metric.type} |" in README, name


def test_every_flag_and_its_environment_twin_are_documented() -> None:
    for flag in FLAGS:
        env = "SIDECAR_" + flag.name.upper().replace("-", "_")
        assert f"`--{flag.name}`" in README and f"`{env}`" in README, flag.name


def test_every_config_key_is_documented() -> None:
    for section, cls in (("", Config), ("cors.", Cors), ("jwks.", Jwks), ("limits.", Limits), ("decision.", Decision)):
        for key in cls.__dataclass_fields__:
            if key in ("providers", "cors", "jwks", "limits", "decision"):
                continue
            assert f"`{section}{key}`" in README or f"`{key}`" in README, section + key
    for key in Provider.__dataclass_fields__:
        assert f"`providers[].{key}`" in README or f"/ `{key}`" in README or f"`{key}`" in README, key
