"""The command line: flags > environment > file, exit code 2 with the key path, check-config output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from sidecar import __version__
from sidecar.cli import FLAGS, build_config, parser
from sidecar.config import Config, Cors, Decision, Jwks, Limits
from sidecar.config.model import fields_of
from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream, sidecar_args
from tests.support import SidecarProcess, free_port

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


# --- one model behind run and check-config -----------------------------------------------------------------

PROVIDER_FLAGS = ("--issuer", "https://x", "--audience", "a", "--jwks-url", "https://x/j")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return {**env, **extra}


def test_two_key_sources_as_flags_are_a_config_error_not_a_silent_choice(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(DevIssuer().jwks()))
    for command in ("run", "check-config"):
        r = sidecar(command, *PROVIDER_FLAGS, "--jwks-file", str(jwks), env=clean_env())
        assert r.returncode == 2, r.stderr
        assert "providers[0]: set exactly one key source" in r.stderr and "jwks_url, jwks_file" in r.stderr


def test_an_upstream_port_out_of_range_fails_run_and_check_config() -> None:
    for command in ("run", "check-config"):
        r = sidecar(command, *PROVIDER_FLAGS, "--upstream", "http://127.0.0.1:99999", env=clean_env())
        assert r.returncode == 2
        assert "config error: upstream: 'http://127.0.0.1:99999': the port must be a number from 1 to 65535" in r.stderr
        assert "(from --upstream)" in r.stderr


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "cannot read"), ("not json", "not a usable JWK Set: not JSON"), ('{"keys": []}', "no usable key")],
    ids=["missing", "not-json", "no-keys"],
)
def test_a_jwks_file_must_exist_and_hold_keys_at_start(tmp_path: Path, content: str | None, words: str) -> None:
    jwks = tmp_path / "jwks.json"
    if content is not None:
        jwks.write_text(content)
    args = (
        "--issuer",
        "https://x",
        "--audience",
        "a",
        "--jwks-file",
        str(jwks),
        "--listen",
        f"127.0.0.1:{free_port()}",
    )
    r = sidecar("run", *args, env=clean_env())
    assert r.returncode == 2
    assert "config error: providers[0].jwks_file:" in r.stderr and words in r.stderr
    r = sidecar("check-config", *args, env=clean_env())
    if content is None:  # check-config may run where the pod's mounted files are not: a note, not a failure
        assert r.returncode == 0 and "note: cannot read" in r.stderr and "run refuses to start without it" in r.stderr
    else:
        assert r.returncode == 2 and words in r.stderr


def test_a_good_jwks_file_passes() -> None:
    issuer = DevIssuer()
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(issuer.jwks(), f)
        f.flush()
        r = sidecar("check-config", "--issuer", "https://x", "--audience", "a", "--jwks-file", f.name, env=clean_env())
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["providers"][0]["jwks_file"] == f.name


def test_check_config_reads_the_environment_and_flags_run_reads() -> None:
    r = sidecar("check-config", *PROVIDER_FLAGS, env=clean_env(SIDECAR_LEEWAY="abc"))
    assert r.returncode == 2 and "config error: leeway: expected a duration" in r.stderr
    assert "(from SIDECAR_LEEWAY)" in r.stderr
    r = sidecar("check-config", *PROVIDER_FLAGS, "--leeway", "2m", env=clean_env(SIDECAR_LEEWAY="abc"))
    assert r.returncode == 0, r.stderr  # the flag wins over the variable
    assert yaml.safe_load(r.stdout)["leeway"] == 120


def test_check_config_reports_every_problem_at_once(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        "leway: 5\nlisten: 127.0.0.1:9000\nadmin_listen: 127.0.0.1:9000\njwks: {refresh: 0}\n"
        "providers:\n  - issuer: https://x\n    audiences: []\n    jwks_url: https://x/j\n    algorithms: [HS256]\n"
    )
    r = sidecar("check-config", str(f), env=clean_env())
    assert r.returncode == 2
    paths = [line.split(": ")[1] for line in r.stderr.splitlines()]
    assert set(paths) >= {"leway", "jwks.refresh", "providers[0].audiences", "providers[0].algorithms[0]"}, r.stderr
    assert all(line.startswith("config error: ") for line in r.stderr.splitlines())


def test_listeners_on_one_address_are_a_config_error() -> None:
    r = sidecar("check-config", *PROVIDER_FLAGS, "--listen", "127.0.0.1:9000", "--admin-listen", "0.0.0.0:9000")
    assert r.returncode == 2
    assert "config error: admin_listen: 0.0.0.0:9000 is the same address as listen (127.0.0.1:9000)" in r.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_on_a_taken_port_says_so_in_one_line_and_exits_2(workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = sidecar(
            "run",
            *PROVIDER_FLAGS,
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
            "--workers",
            workers,
            env=clean_env(),
        )
    assert r.returncode == 2
    assert r.stderr.strip() == f"config error: listen: cannot listen on 127.0.0.1:{port}: the address is in use"


def test_version_and_help() -> None:
    r = sidecar("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"sidecar {__version__}"
    r = sidecar("run", "--help")
    assert r.returncode == 0
    assert "--issuer ISSUER" in r.stdout and "required unless" in r.stdout and "example:" in r.stdout
    assert "--leeway DURATION" in r.stdout and "--listen HOST:PORT" in r.stdout and "--log-level {debug" in r.stdout
    r = sidecar("check-config", "--help")
    assert "--leeway" in r.stdout and "example:" in r.stdout


def test_every_key_below_the_top_level_and_its_sections_has_a_flag() -> None:
    paths = {f.key for f in FLAGS}
    for name in fields_of(Config):
        if name in ("providers", "rules"):
            continue
        if name in ("cors", "jwks", "limits", "decision"):
            section = {"cors": Cors, "jwks": Jwks, "limits": Limits, "decision": Decision}[name]
            assert {f"{name}.{k}" for k in fields_of(section)} <= paths
        else:
            assert name in paths
    names = [f.name for f in FLAGS]
    assert len(names) == len(set(names))


def test_a_switch_can_be_turned_off_by_a_flag_over_the_environment() -> None:
    env = {"SIDECAR_STRIP_AUTHORIZATION": "true"}
    assert build_config(run_args(*PROVIDER_FLAGS), env).strip_authorization is True
    assert build_config(run_args(*PROVIDER_FLAGS, "--no-strip-authorization"), env).strip_authorization is False


def test_repeatable_flags_take_commas_too() -> None:
    cfg = build_config(run_args(*PROVIDER_FLAGS, "--audience", "b,c", "--algorithms", "RS256,ES256"), {})
    assert cfg.providers[0].audiences == ("a", "b", "c") and cfg.providers[0].algorithms == ("RS256", "ES256")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_start_up_line_is_logged_once_per_pod(workers: str, issuer: DevIssuer, upstream: Upstream) -> None:
    proc = SidecarProcess(sidecar_args(issuer, upstream, "--workers", workers)).start()
    try:
        lines = [line for line in proc.log_lines() if "listening" in json.dumps(line)]
    finally:
        proc.stop()
    assert len(lines) == 1, proc.logs()
    assert f"127.0.0.1:{proc.port}" in json.dumps(lines[0])
