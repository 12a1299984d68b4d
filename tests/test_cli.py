"""The command line: flags > environment > file, exit code 2 with the key path, check-config output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from sidecar.cli import build_config, parser

ROOT = Path(__file__).resolve().parent.parent


def run_args(*argv: str) -> object:
    return parser().parse_args(["run", *argv])


def test_flags_beat_environment_which_beats_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "leeway": 10,
                "expired_grace": 5,
                "jwks": {"refresh": "1m"},
                "providers": [{"issuer": "https://file", "audiences": ["a"], "jwks_file": "/k.json"}],
            }
        )
    )
    env = {"SIDECAR_LEEWAY": "20", "SIDECAR_EXPIRED_GRACE": "7", "SIDECAR_AUDIENCE": "x,y"}
    cfg = build_config(run_args("--config", str(f), "--leeway", "30", "--jwks-url", "https://flag/jwks"), env)
    assert cfg.leeway == 30  # flag
    assert cfg.expired_grace == 7  # env
    assert cfg.jwks.refresh == 60  # file
    p = cfg.providers[0]
    assert p.audiences == ("x", "y")
    assert p.jwks_url == "https://flag/jwks" and p.jwks_file is None  # a flag's key source replaces the file's


def test_every_flag_has_an_environment_twin() -> None:
    env = {
        "SIDECAR_ISSUER": "https://env",
        "SIDECAR_AUDIENCE": "api",
        "SIDECAR_JWKS_URL": "https://env/jwks",
        "SIDECAR_JWKS_REFRESH": "2m",
        "SIDECAR_JWKS_MAX_STALE": "1h",
        "SIDECAR_JWKS_REFETCH_COOLDOWN": "10s",
        "SIDECAR_KEY_RETENTION": "2h",
        "SIDECAR_PUBLIC_PATH": "/a,/b",
        "SIDECAR_CLAIM_HEADER": "X-Auth-Sub=sub",
        "SIDECAR_CORS_ORIGIN": "https://x.example",
        "SIDECAR_STRIP_AUTHORIZATION": "true",
        "SIDECAR_ALGORITHMS": "RS256,ES256",
        "SIDECAR_LISTEN": "127.0.0.1:1",
        "SIDECAR_ADMIN_LISTEN": "127.0.0.1:2",
    }
    cfg = build_config(run_args(), env)
    assert cfg.jwks.refresh == 120 and cfg.jwks.max_stale == 3600 and cfg.jwks.refetch_cooldown == 10
    assert cfg.jwks.key_retention == 7200 and cfg.public_paths == ("/a", "/b")
    assert cfg.claim_headers == (("X-Auth-Sub", "sub"),) and cfg.cors.origins == ("https://x.example",)
    assert cfg.strip_authorization is True and cfg.providers[0].algorithms == ("RS256", "ES256")


def sidecar(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
    )


def test_bad_config_exits_2_with_the_key_path_and_problem(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        "providers:\n  - issuer: https://x\n    audiences: [a]\n    jwks_url: https://x/j\n    algorithms: [HS256]\n"
    )
    r = sidecar("check-config", str(f))
    assert r.returncode == 2
    assert r.stderr.startswith("config error: providers[0].algorithms[0]: 'HS256': symmetric algorithms are refused")


def test_run_with_a_bad_flag_value_exits_2_before_listening() -> None:
    r = sidecar("run", "--issuer", "https://x", "--audience", "a", "--jwks-url", "https://x/j", "--leeway", "soon")
    assert r.returncode == 2
    assert "config error: leeway:" in r.stderr


def test_run_without_a_provider_exits_2() -> None:
    r = sidecar("run")
    assert r.returncode == 2 and "config error: providers:" in r.stderr


def test_unreadable_or_non_yaml_files_exit_2(tmp_path: Path) -> None:
    assert sidecar("check-config", str(tmp_path / "missing.yaml")).returncode == 2
    bad = tmp_path / "x.yaml"
    bad.write_text("a: [unclosed")
    r = sidecar("check-config", str(bad))
    assert r.returncode == 2 and "not valid YAML" in r.stderr


def test_check_config_prints_the_effective_config_with_defaults() -> None:
    r = sidecar("check-config", str(ROOT / "config" / "minimal.yaml"))
    assert r.returncode == 0, r.stderr
    out = yaml.safe_load(r.stdout)
    assert out["leeway"] == 60.0 and out["jwks"]["max_stale"] == 86400.0
    assert out["providers"][0]["algorithms"][0] == "RS256"
