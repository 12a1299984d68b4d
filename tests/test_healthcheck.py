"""`sidecar healthcheck` finds the running `sidecar run`, resolves its admin address as `run` did, and asks it.

The process table is a directory laid out like /proc (cmdline, environ, cwd) so the tests choose exactly which
processes exist; the admin listeners are real aiohttp servers on loopback. tests/test_container.py runs the
same check as the image's HEALTHCHECK against the real /proc.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from sidecar.devtools.issuer import DevIssuer
from sidecar.healthcheck import _run_args, check, find_running, healthz_url
from tests.support import SidecarProcess, ThreadedServer


def fake_proc(root: Path, pid: int, argv: list[str], environ: dict[str, str], cwd: Path | None = None) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in environ.items()))
    if cwd is not None:
        (d / "cwd").symlink_to(cwd)


class Admin:
    """A real admin listener whose /healthz answers `status`."""

    def __init__(self, status: int = 200) -> None:
        async def healthz(request: web.Request) -> web.Response:
            return web.Response(status=status, text="ok" if status == 200 else "no")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        self.server = ThreadedServer(app)

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture
def admin() -> Iterator[Admin]:
    a = Admin()
    yield a
    a.server.stop()


PROVIDER = ["--jwks-file", "/dev/null", "--issuer", "https://idp.example.test", "--audience", "api"]


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("0.0.0.0:9901", "http://127.0.0.1:9901/healthz"),
        ("127.0.0.1:9100", "http://127.0.0.1:9100/healthz"),
        ("[::]:9901", "http://[::1]:9901/healthz"),
        ("[::1]:9902", "http://[::1]:9902/healthz"),
        ("10.1.2.3:9903", "http://10.1.2.3:9903/healthz"),
    ],
)
def test_a_wildcard_admin_bind_is_asked_on_loopback_of_its_family(listen: str, url: str) -> None:
    assert healthz_url(listen) == url


@pytest.mark.parametrize(
    ("argv", "args"),
    [
        (["/opt/venv/bin/python3", "/opt/app/bin/sidecar", "run", "--config", "/c.yaml"], ("--config", "/c.yaml")),
        (["python", "-m", "sidecar", "run"], ()),
        (["/opt/venv/bin/python3", "/opt/app/bin/sidecar", "demo"], None),
        (["/opt/venv/bin/python3", "/opt/app/bin/sidecar", "healthcheck"], None),
        (["/sbin/tini", "--", "nginx"], None),
    ],
)
def test_only_a_sidecar_run_command_line_counts(argv: list[str], args: tuple[str, ...] | None) -> None:
    assert _run_args(argv) == args


def test_the_lowest_sidecar_run_is_chosen_over_workers_and_other_commands(tmp_path: Path) -> None:
    run = ["/opt/venv/bin/python3", "/opt/app/bin/sidecar", "run", "--admin-listen", "127.0.0.1:9300"]
    fake_proc(tmp_path, 3, ["/usr/sbin/nginx", "-g", "daemon off;"], {})
    fake_proc(tmp_path, 7, run, {"SIDECAR_LOG_LEVEL": "info"}, cwd=tmp_path)
    fake_proc(tmp_path, 9, run, {})  # a forked worker: same argv
    fake_proc(tmp_path, 12, ["/opt/venv/bin/python3", "/opt/app/bin/sidecar", "healthcheck"], {})
    (tmp_path / "self").mkdir()
    found = find_running(tmp_path)
    assert found is not None
    assert (found.pid, found.args) == (7, ("--admin-listen", "127.0.0.1:9300"))
    assert found.environ == {"SIDECAR_LOG_LEVEL": "info"} and found.cwd == str(tmp_path)


def test_an_init_in_front_resolves_to_the_same_arguments(tmp_path: Path) -> None:
    # `docker run --init`: PID 1 is docker-init (tini), which forks `sidecar run ...` with its own argv tail
    fake_proc(tmp_path, 1, ["/sbin/docker-init", "--", "sidecar", "run", "--admin-listen", "127.0.0.1:9300"], {})
    fake_proc(
        tmp_path, 7, ["/opt/venv/bin/python3", "/opt/app/bin/sidecar", "run", "--admin-listen", "127.0.0.1:9300"], {}
    )
    found = find_running(tmp_path)
    assert found is not None and found.args == ("--admin-listen", "127.0.0.1:9300")


def test_healthy_on_the_admin_port_from_a_config_file_relative_to_the_sidecars_directory(
    tmp_path: Path, admin: Admin, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "conf.yaml").write_text(f"admin_listen: {admin.listen}\n")
    fake_proc(tmp_path / "proc", 5, ["sidecar", "run", "--config", "conf.yaml", *PROVIDER], {}, cwd=workdir)
    assert check(proc=tmp_path / "proc") == 0
    assert capsys.readouterr().out.strip() == f"healthy: http://{admin.listen}/healthz 200"


def test_the_environment_of_the_running_sidecar_beats_its_config_file(tmp_path: Path, admin: Admin) -> None:
    (tmp_path / "conf.yaml").write_text("admin_listen: 127.0.0.1:1\n")  # nothing listens there
    env = {"SIDECAR_CONFIG": str(tmp_path / "conf.yaml"), "SIDECAR_ADMIN_LISTEN": admin.listen}
    fake_proc(tmp_path / "proc", 5, ["sidecar", "run", *PROVIDER], env)
    assert check(proc=tmp_path / "proc") == 0


def test_a_flag_beats_the_environment(tmp_path: Path, admin: Admin) -> None:
    env = {"SIDECAR_ADMIN_LISTEN": "127.0.0.1:1"}
    fake_proc(tmp_path / "proc", 5, ["sidecar", "run", "--admin-listen", admin.listen, *PROVIDER], env)
    assert check(proc=tmp_path / "proc") == 0


def test_unhealthy_when_healthz_is_not_200(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failing = Admin(status=503)
    try:
        fake_proc(tmp_path, 5, ["sidecar", "run", "--admin-listen", failing.listen, *PROVIDER], {})
        assert check(proc=tmp_path) == 1
        assert capsys.readouterr().out.startswith("unhealthy: ")
    finally:
        failing.server.stop()


def test_unhealthy_when_nothing_listens_or_no_sidecar_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(proc=tmp_path) == 1
    assert "no `sidecar run` process" in capsys.readouterr().out
    fake_proc(tmp_path, 5, ["sidecar", "run", "--admin-listen", "127.0.0.1:1", *PROVIDER], {})
    assert check(timeout=1, proc=tmp_path) == 1


def test_unhealthy_not_a_crash_when_the_running_config_does_not_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_proc(tmp_path, 5, ["sidecar", "run", "--admin-listen", "soon", *PROVIDER], {})
    assert check(proc=tmp_path) == 1
    assert "cannot resolve the admin address of pid 5" in capsys.readouterr().out


def test_a_key_file_gone_bad_since_start_does_not_make_the_container_unhealthy(tmp_path: Path, admin: Admin) -> None:
    """Only the admin address is resolved: a broken key file costs staleness, never a restart loop."""
    bad = tmp_path / "keys.json"
    bad.write_text("{not json")
    args = ["sidecar", "run", "--admin-listen", admin.listen, "--issuer", "https://i", "--audience", "a"]
    fake_proc(tmp_path / "proc", 5, [*args, "--jwks-file", str(bad)], {})
    assert check(proc=tmp_path / "proc") == 0


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs a Linux /proc")
def test_the_cli_subcommand_checks_a_real_sidecar_through_the_real_proc(tmp_path: Path) -> None:
    """Only this test's sidecar may be found, so the real /proc is mirrored for its pid alone."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(DevIssuer().jwks()))
    sc = SidecarProcess(["--jwks-file", str(jwks), "--issuer", "https://idp.example.test", "--audience", "api"])
    sc.start()
    try:
        assert sc.proc is not None
        real = Path("/proc") / str(sc.proc.pid)
        argv = [a.decode() for a in (real / "cmdline").read_bytes().split(b"\0") if a]
        fake_proc(tmp_path / "proc", sc.proc.pid, argv, dict(os.environ), cwd=Path(os.readlink(real / "cwd")))
        assert check(proc=tmp_path / "proc") == 0
    finally:
        sc.stop()
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "healthcheck", "--timeout", "1"], capture_output=True, text=True, check=False
    )
    assert out.returncode in (0, 1)  # the real /proc: whatever else runs on this machine, it answers, never crashes
