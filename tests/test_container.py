"""The image, built and run the way Kubernetes runs it: read-only root, a tmpfs /tmp, no capabilities,
no privilege gain, UID 10001.

The image is built once per session with `scripts/build.sh` (the same command a user runs) on the base named
by PYTHON_IMAGE (default: the Dockerfile's official base). The engine is docker where its daemon answers,
else podman. Tests never pull: a missing base image skips them locally and fails them in CI (CI=true), as
does a missing engine. Containers that talk to the test's upstream use host networking, so the sidecar and
the echo app on 127.0.0.1 reach each other as in a pod; the rest run with no network at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from aiohttp import web

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream
from tests.support import ROOT, Reply, ThreadedServer, free_port, request

HARDENED = ("--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
TAG = "localhost/jwt-sidecar:test"
ISSUER, AUDIENCE = "https://idp.example.test", "orders-api"
DRAIN, STOP_TIMEOUT = 8, 20  # drain_timeout in the config; --stop-timeout on `run`: drain + margin


def official_base() -> str:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.partition("=")[2]
    raise AssertionError("the Dockerfile declares no default PYTHON_IMAGE")


def unavailable(reason: str) -> NoReturn:
    """In CI the container tests must run: what would skip them locally fails them there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"container tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Engine:
    name: str  # docker | podman

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.name, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name} {shlex.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def inspect(self, what: str, fmt: str, *, image: bool = False) -> str:
        return self.run("image" if image else "container", "inspect", "--format", fmt, what).stdout.strip()

    def health(self, container: str, deadline: float = 40) -> str:
        """The HEALTHCHECK's verdict once the sidecar is up: podman runs it on demand (no systemd timers
        here), docker on the interval the test set at `run`."""
        end = time.monotonic() + deadline
        while True:
            if self.name == "podman":
                self.run("healthcheck", "run", container, check=False)
            status = self.inspect(container, "{{.State.Health.Status}}")
            if status == "healthy" or time.monotonic() > end:
                return status
            time.sleep(0.5)


@dataclass(frozen=True)
class Image:
    engine: Engine
    tag: str
    base: str
    build_seconds: float


@pytest.fixture(scope="session")
def engine() -> Engine:
    tried = []
    for name in ("docker", "podman"):
        if shutil.which(name) is None:
            tried.append(f"{name}: not installed")
            continue
        info = subprocess.run([name, "info"], capture_output=True, text=True, timeout=60, check=False)
        if info.returncode == 0:
            return Engine(name)
        tried.append(f"{name}: `{name} info` failed")
    unavailable("no container engine answers (" + "; ".join(tried) + ")")


@pytest.fixture(scope="session")
def image(engine: Engine) -> Image:
    base = os.environ.get("PYTHON_IMAGE") or official_base()
    if engine.run("image", "inspect", base, check=False).returncode != 0:
        unavailable(
            f"base image {base} is not present in {engine.name} (tests never pull: pull it, or set PYTHON_IMAGE)"
        )
    env = {**os.environ, "IMAGE": TAG, "ENGINE": engine.name, "PYTHON_IMAGE": base}
    started = time.monotonic()
    build = subprocess.run(
        ["bash", "scripts/build.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return Image(engine, TAG, base, time.monotonic() - started)


@dataclass
class Container:
    engine: Engine
    name: str

    def logs(self) -> str:
        out = self.engine.run("logs", self.name, check=False)
        return out.stdout + out.stderr

    def exit_code(self) -> int:
        return int(self.engine.inspect(self.name, "{{.State.ExitCode}}"))

    def running(self) -> bool:
        return self.engine.inspect(self.name, "{{.State.Running}}") == "true"


@contextlib.contextmanager
def container(img: Image, *args: str, run_args: tuple[str, ...] = ()) -> Iterator[Container]:
    """A detached, hardened container from the test image; removed afterwards whatever happened."""
    name = f"sidecar-test-{uuid.uuid4().hex[:10]}"
    extra: tuple[str, ...] = ()
    if img.engine.name == "docker":
        extra = ("--health-interval", "1s", "--health-start-period", "30s")  # podman: `healthcheck run` instead
    img.engine.run("run", "-d", "--name", name, *HARDENED, *extra, *run_args, img.tag, *args)
    c = Container(img.engine, name)
    try:
        yield c
    finally:
        now = ("-t", "0") if img.engine.name == "podman" else ()  # docker's rm -f kills at once anyway
        img.engine.run("rm", "-f", *now, name, check=False)


def run_once(img: Image, *args: str, run_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return img.engine.run("run", "--rm", *HARDENED, *run_args, img.tag, *args, check=False)


# --- mounted config -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mounted:
    """A directory mounted read-only at /etc/sidecar: config files and the JWKS the sidecar reads."""

    host_dir: Path
    issuer: DevIssuer

    @property
    def volume(self) -> tuple[str, str]:
        return ("-v", f"{self.host_dir}:/etc/sidecar:ro")

    def write(self, name: str, text: str) -> None:
        path = self.host_dir / name
        path.write_text(text)
        path.chmod(0o644)  # readable by UID 10001 in the container


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Mounted:
    host_dir = tmp_path_factory.mktemp("etc-sidecar")
    host_dir.chmod(0o755)
    issuer = DevIssuer(issuer=ISSUER, audience=AUDIENCE)
    m = Mounted(host_dir, issuer)
    m.write("jwks.json", json.dumps(issuer.jwks()))
    return m


def config_yaml(**over: str) -> str:
    """A config with the mounted JWKS file; `over` sets top-level scalar keys (listen, admin_listen, ...)."""
    lines = [f"{k}: {json.dumps(v)}" for k, v in over.items()]
    lines += [
        "providers:",
        f"  - issuer: {ISSUER}",
        f"    audiences: [{AUDIENCE}]",
        "    jwks_file: /etc/sidecar/jwks.json",
        "    algorithms: [RS256]",
        "limits:",
        f"  drain_timeout: {DRAIN}s",
    ]
    return "\n".join(lines) + "\n"


def wait_ready(admin: str, c: Container, deadline: float = 40) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            if request(admin, path="/readyz", timeout=2).status == 200:
                return
        assert c.running(), c.logs()
        time.sleep(0.2)
    raise AssertionError("the sidecar in the container never became ready\n" + c.logs())


# --- the image itself -----------------------------------------------------------------------------------


def test_runs_as_uid_10001_and_cannot_write_its_root_filesystem(image: Image) -> None:
    probe = (
        "import os\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n    open('/opt/app/x', 'w')\nexcept OSError as e:\n    print('read-only', e.errno)\n"
        "open('/tmp/ok', 'w').write('x'); print('tmp writable')"
    )
    out = run_once(image, "-c", probe, run_args=("--network", "none", "--entrypoint", "python"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["10001 10001", "read-only 30", "tmp writable"]  # 30: EROFS


def test_labels_name_the_source_version_and_revision(image: Image) -> None:
    labels = json.loads(image.engine.inspect(image.tag, "{{json .Config.Labels}}", image=True))
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.base.name"] == image.base
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    if head.returncode == 0:
        assert labels["org.opencontainers.image.revision"] == head.stdout.strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["org.opencontainers.image.created"])


def test_what_the_image_adds_to_its_base_stays_small(image: Image) -> None:
    size = int(image.engine.inspect(image.tag, "{{.Size}}", image=True))
    base = int(image.engine.inspect(image.base, "{{.Size}}", image=True))
    added_mb = (size - base) / 1e6
    print(f"\nimage {size / 1e6:.1f} MB = base {base / 1e6:.1f} MB + {added_mb:.1f} MB ({image.engine.name})")
    assert 20 < added_mb < 75, added_mb  # docs/image.md: about 62 MB (the venv) + 4 MB (the project, compiled)


# --- check-config ---------------------------------------------------------------------------------------


def test_check_config_exits_0_on_a_good_mounted_file_and_2_naming_the_key_on_a_bad_one(
    image: Image, mounted: Mounted
) -> None:
    mounted.write("good.yaml", config_yaml(admin_listen="127.0.0.1:9902"))
    mounted.write("bad.yaml", config_yaml(leeway="soon"))
    ok = run_once(image, "check-config", "/etc/sidecar/good.yaml", run_args=("--network", "none", *mounted.volume))
    assert ok.returncode == 0, ok.stderr
    assert "admin_listen: 127.0.0.1:9902" in ok.stdout and "jwks_file: /etc/sidecar/jwks.json" in ok.stdout
    bad = run_once(image, "check-config", "/etc/sidecar/bad.yaml", run_args=("--network", "none", *mounted.volume))
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "config error: leeway:" in bad.stderr


# --- sidecar run, through a real request ----------------------------------------------------------------


@dataclass(frozen=True)
class Running:
    c: Container
    url: str
    admin: str


@pytest.fixture(scope="module")
def running(image: Image, mounted: Mounted, upstream: Upstream) -> Iterator[Running]:
    """`sidecar run` with the default command line, the config mounted where the image expects it, and the
    admin port moved away from 9901 in that file."""
    port, admin_port = free_port(), free_port()
    mounted.write(
        "config.yaml",
        config_yaml(listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin_port}", upstream=upstream.url),
    )
    with container(image, run_args=("--network", "host", *mounted.volume)) as c:
        admin = f"http://127.0.0.1:{admin_port}"
        wait_ready(admin, c)
        yield Running(c, f"http://127.0.0.1:{port}", admin)


def test_run_answers_401_without_a_token_and_forwards_a_verified_one_with_authorization_intact(
    running: Running, mounted: Mounted, upstream: Upstream
) -> None:
    upstream.clear()
    missing = request(running.url, path="/orders")
    assert missing.status == 401
    assert (missing.header("WWW-Authenticate") or "").startswith('Bearer realm="sidecar"')
    assert upstream.record == []

    bearer = "Bearer " + mounted.issuer.mint(sub="alice")
    ok = request(running.url, path="/orders?page=2", headers={"Authorization": bearer})
    assert ok.status == 200, ok.body
    (seen,) = upstream.record
    assert seen["path"] == "/orders?page=2"
    assert [v for k, v in seen["headers"] if k.lower() == "authorization"] == [bearer]


def test_healthcheck_is_healthy_on_the_admin_port_the_config_file_moved(image: Image, running: Running) -> None:
    assert image.engine.health(running.c.name) == "healthy", running.c.logs()


@pytest.mark.parametrize(
    ("how", "run_args", "flags"),
    [
        ("default 9901", (), ()),
        ("environment", ("-e", "SIDECAR_ADMIN_LISTEN=127.0.0.1:9123"), ()),
        ("flag", (), ("--admin-listen", "127.0.0.1:9124")),
    ],
)
def test_healthcheck_follows_the_admin_port_however_it_is_set(
    image: Image, mounted: Mounted, how: str, run_args: tuple[str, ...], flags: tuple[str, ...]
) -> None:
    # No network: nothing else listens in the container, so a check asking the wrong port fails.
    mounted.write("isolated.yaml", config_yaml())
    args = ("run", "--config", "/etc/sidecar/isolated.yaml", *flags)
    with container(image, *args, run_args=("--network", "none", *mounted.volume, *run_args)) as c:
        assert image.engine.health(c.name) == "healthy", f"{how}\n{c.logs()}"


def test_healthcheck_is_unhealthy_when_no_sidecar_runs(image: Image) -> None:
    out = run_once(image, "healthcheck", run_args=("--network", "none"))
    assert out.returncode == 1 and "no `sidecar run` process" in out.stdout, out.stdout + out.stderr


# --- SIGTERM --------------------------------------------------------------------------------------------


class SlowApp:
    """An upstream that notes each request as it arrives, then takes `SLOW` seconds to answer it."""

    SLOW = 3.0

    def __init__(self) -> None:
        self.arrived: list[str] = []
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.server = ThreadedServer(app)

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.append(request.path)
        await asyncio.sleep(self.SLOW)
        return web.Response(text="done")


def test_sigterm_drains_in_flight_requests_and_exits_0_inside_the_stop_timeout(image: Image, mounted: Mounted) -> None:
    slow = SlowApp()
    port, admin_port = free_port(), free_port()
    mounted.write(
        "drain.yaml",
        config_yaml(listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin_port}", upstream=slow.server.url),
    )
    run_args = ("--network", "host", "--stop-timeout", str(STOP_TIMEOUT), *mounted.volume)
    try:
        with container(image, "run", "--config", "/etc/sidecar/drain.yaml", run_args=run_args) as c:
            wait_ready(f"http://127.0.0.1:{admin_port}", c)
            bearer = "Bearer " + mounted.issuer.mint(sub="bob")
            replies: dict[int, Reply | BaseException] = {}

            def one(i: int) -> None:
                try:
                    replies[i] = request(
                        f"http://127.0.0.1:{port}",
                        path=f"/slow/{i}",
                        headers={"Authorization": bearer},
                        timeout=STOP_TIMEOUT,
                    )
                except BaseException as e:  # the assertion below shows it
                    replies[i] = e

            n = 8
            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            end = time.monotonic() + 15
            while len(slow.arrived) < n and time.monotonic() < end:  # every request accepted and at the app
                time.sleep(0.02)
            assert len(slow.arrived) == n, c.logs()

            started = time.monotonic()
            image.engine.run("stop", c.name, timeout=STOP_TIMEOUT + 30)  # no -t: the container's --stop-timeout
            took = time.monotonic() - started
            for t in threads:
                t.join(STOP_TIMEOUT)

            got = [(r.status, r.body) if isinstance(r, Reply) else repr(r) for _, r in sorted(replies.items())]
            assert got == [(200, b"done")] * n, c.logs()
            assert c.exit_code() == 0, c.logs()  # 137 would mean the engine had to SIGKILL it
            assert 1 < took < STOP_TIMEOUT, took  # it waited for the app's answers, and not for the kill
    finally:
        slow.server.stop()


# --- demo -----------------------------------------------------------------------------------------------


def test_demo_starts_and_its_first_curl_line_works(image: Image) -> None:
    with container(image, "demo", run_args=("--network", "host")) as c:
        end = time.monotonic() + 40
        while "# Ctrl-C" not in c.logs() and time.monotonic() < end:
            assert c.running(), c.logs()
            time.sleep(0.3)
        logs = c.logs()
        curls = [ln for ln in logs.splitlines() if ln.startswith("curl ")]
        assert curls, logs
        # the line mints its token from the demo's issuer as it runs: run it as a user would, in a shell
        status = subprocess.run(
            ["bash", "-c", f"{curls[0]} -o /dev/null -w '%{{http_code}}'"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert status.stdout == "200", (curls[0], status.stdout, status.stderr)


# --- the dependency layer -------------------------------------------------------------------------------


def test_after_a_source_change_the_image_rebuilds_without_network_and_keeps_the_dependency_layer(
    image: Image, tmp_path: Path
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name in ("Dockerfile", ".dockerignore", "requirements.lock", "pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, ctx / name)
    for folder in ("sidecar", "build_support"):
        shutil.copytree(ROOT / folder, ctx / folder, ignore=shutil.ignore_patterns("__pycache__"))
    with (ctx / "sidecar" / "__init__.py").open("a") as f:
        f.write("\n# a source change\n")
    with (ctx / "README.md").open("a") as f:
        f.write("\nA README change.\n")

    tag = f"localhost/jwt-sidecar:offline-{uuid.uuid4().hex[:8]}"
    args = ["build", "--network", "none", "-t", tag, "--build-arg", f"PYTHON_IMAGE={image.base}"]
    args += ["--build-arg", "REVISION=a-new-revision"]  # changes a label, not a layer
    if image.engine.name == "podman":
        args += ["--format", "docker"]
    try:
        image.engine.run(*args, str(ctx), timeout=300)
        layers = json.loads(image.engine.inspect(tag, "{{json .RootFS.Layers}}", image=True))
        before = json.loads(image.engine.inspect(image.tag, "{{json .RootFS.Layers}}", image=True))
        # base..., users, /opt/venv, /opt/app: everything but the project's layer is shared
        assert layers[:-1] == before[:-1]
        assert layers[-1] != before[-1]
    finally:
        image.engine.run("rmi", "-f", tag, check=False)
