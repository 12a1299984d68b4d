"""Metrics counted in plain Python values export exactly what prometheus_client's own metrics export.

The reference is `Metrics(local=False)`: the same declarations built as prometheus_client Counter, Gauge and
Histogram objects, which is what the sidecar used before. Both see the same operations and must then give the
same exposition text, in one process and (through the shared files) in multiprocess mode.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values
from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrics import Metrics

Ops = Callable[[Metrics], None]
_CREATED = re.compile(rb"^(\w+_created(?:\{[^}]*\})?) \S+$", re.MULTILINE)


def request_path(m: Metrics) -> None:
    """What requests do: every metric the request path touches, with and without labels."""
    m.provider("default")
    m.provider("second")
    m.routes(["api", "admin"])
    for _ in range(3):
        m.in_flight.inc()
    m.in_flight.dec()
    m.auth_success.inc()
    m.auth_success.inc(4)
    m.auth_failures.labels("expired").inc()
    m.auth_failures.labels(reason="bad_signature").inc(2)
    m.auth_reported.labels("unknown_kid").inc()
    m.requests_rejected.labels("bad_request").inc()
    m.upstream_errors.labels("upstream_timeout").inc()
    m.cors_preflights.labels("allowed").inc()
    m.token_cache.labels("hit").inc()
    m.token_cache.labels("miss").inc()
    m.public_requests.inc()
    m.grace_accepted.inc()
    m.future_iat.inc()
    m.kidless_attempts.labels("default", "failed").inc()
    m.websockets.labels("token_expired").inc()
    m.connections_closed.labels("idle_timeout").inc()
    m.route_requests.labels("api", "allowed").inc()
    m.route_requests.labels("admin", "expired").inc()  # a series that did not exist before
    # on a bound, just above one, below the first, above the last
    for seconds in (0.00001, 0.00005, 0.000051, 0.0003, 0.001, 0.0999, 0.1, 7.0):
        m.validation_seconds.observe(seconds)
        m.upstream_seconds.observe(seconds * 300)


def background(m: Metrics) -> None:
    """What the key views, the reloader and the admin scrape do."""
    m.jwks_fetches.labels("default", "success").inc()
    m.jwks_keys_ignored.labels("default", "weak").inc(3)
    m.jwks_refetches.labels("second", "suppressed").inc()
    m.jwks_keys.labels("default").set(2)
    m.jwks_age.labels("default").set(12.5)
    m.jwks_stale.labels("second").set(0)
    m.jwks_last_success.labels("default").set(1_700_000_000.25)
    m.jwks_last_change.labels("default").set(1_700_000_000)
    m.clock_skew.labels("default").set(-1.5)
    m.config_info.labels("abc123").set(1)
    m.config_info.labels("abc123").set(0)
    m.config_info.labels("def456").set(1)
    m.config_reloads.labels("ok").inc()
    m.token_cache_entries.set(17)
    m.token_cache_entries.inc(3)
    m.token_cache_entries.dec(2)
    m.ready.set(1)


def everything_twice(m: Metrics) -> None:
    for _ in range(2):
        request_path(m)
        background(m)


def text(m: Metrics) -> bytes:
    return generate_latest(m.registry)


def without_created_values(exposition: bytes) -> bytes:
    """Each `_created` sample is the wall time its series was made: the same series, a different instant."""
    return _CREATED.sub(rb"\1 <created>", exposition)


@pytest.mark.parametrize(
    "ops",
    [lambda m: None, request_path, background, everything_twice],
    ids=["fresh", "requests", "background", "everything-twice"],
)
def test_the_exposition_is_prometheus_clients_after_the_same_operations(ops: Ops) -> None:
    local, reference = Metrics(), Metrics(local=False)
    ops(local)
    ops(reference)
    assert without_created_values(text(local)) == without_created_values(text(reference))
    created = _CREATED.findall(text(local))
    assert created and created == _CREATED.findall(text(reference))


def test_the_created_series_follow_prometheus_clients_switch() -> None:
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        local, reference = Metrics(), Metrics(local=False)
        request_path(local)
        request_path(reference)
        assert b"_created" not in text(local)
        assert text(local) == text(reference)
    finally:
        prometheus_client.enable_created_metrics()  # type: ignore[no-untyped-call]


def test_the_request_path_metrics_are_plain_values_not_prometheus_client_objects() -> None:
    m = Metrics()
    for metric in (m.auth_success, m.in_flight, m.validation_seconds, m.upstream_seconds, m.auth_failures):
        assert type(metric).__module__ == "sidecar.metrics"
    assert isinstance(Metrics(local=False).auth_success, prometheus_client.Counter)


def test_a_label_child_is_made_once_and_found_by_position_or_name() -> None:
    m = Metrics()
    child = m.jwks_fetches.labels("default", "timeout")
    assert m.jwks_fetches.labels(provider="default", result="timeout") is child
    assert m.jwks_fetches.labels(result="timeout", provider="default") is child
    child.inc()
    m.jwks_fetches.labels(provider="default", result="timeout").inc(2)
    assert m.registry.get_sample_value("sidecar_jwks_fetches_total", {"provider": "default", "result": "timeout"}) == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.auth_failures.labels(),
        lambda m: m.auth_failures.labels("expired", "extra"),
        lambda m: m.auth_failures.labels(kind="expired"),
        lambda m: m.jwks_fetches.labels("default", result="success"),
        lambda m: m.auth_success.inc(-1),
    ],
    ids=["too-few", "too-many", "wrong-name", "mixed", "negative-increment"],
)
def test_a_call_prometheus_client_refuses_is_refused_the_same_way(call: Callable[[Metrics], object]) -> None:
    with pytest.raises(ValueError):
        call(Metrics(local=False))
    m = Metrics()
    before = text(m)
    with pytest.raises(ValueError):
        call(m)
    assert text(m) == before  # and nothing was counted or created


def test_a_histogram_counts_each_observation_in_the_first_bucket_at_or_above_it() -> None:
    m = Metrics()
    for seconds in (0.00005, 0.00005, 0.0001, 0.0004, 0.25, 31.0):
        m.validation_seconds.observe(seconds)

    def bucket(le: str) -> float | None:
        return m.registry.get_sample_value("sidecar_validation_duration_seconds_bucket", {"le": le})

    assert bucket("5e-05") == 2  # a bound includes itself
    assert bucket("0.0001") == 3
    assert bucket("0.00025") == 3
    assert bucket("0.0005") == 4
    assert bucket("0.1") == 4
    assert bucket("+Inf") == 6
    assert m.registry.get_sample_value("sidecar_validation_duration_seconds_count") == 6
    total = m.registry.get_sample_value("sidecar_validation_duration_seconds_sum")
    assert total == pytest.approx(0.00005 * 2 + 0.0001 + 0.0004 + 0.25 + 31.0)


def test_every_observation_lands_in_the_bucket_prometheus_client_puts_it_in() -> None:
    local, reference = Metrics(), Metrics(local=False)
    bounds = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.1, 1.0, 30.0]
    amounts = [-math.inf, -1.0, 0.0, *bounds, *(b * 1.0001 for b in bounds), *(b * 0.9999 for b in bounds), math.inf]
    for m in (local, reference):
        for amount in amounts:
            m.validation_seconds.observe(amount)
    assert without_created_values(text(local)) == without_created_values(text(reference))


def test_a_nan_observation_spoils_only_the_sum_as_in_prometheus_client() -> None:
    local, reference = Metrics(), Metrics(local=False)
    for m in (local, reference):
        m.upstream_seconds.observe(0.003)
        m.upstream_seconds.observe(math.nan)
    assert local.registry.get_sample_value("sidecar_upstream_duration_seconds_count") == 1
    assert without_created_values(text(local)) == without_created_values(text(reference))


def test_gauges_set_inc_and_dec() -> None:
    m = Metrics()
    m.in_flight.inc()
    m.in_flight.inc(2)
    m.in_flight.dec()
    assert m.registry.get_sample_value("sidecar_requests_in_flight") == 2
    m.in_flight.set(7)
    m.in_flight.dec(7)
    assert m.registry.get_sample_value("sidecar_requests_in_flight") == 0
    m.clock_skew.labels("default").set(-2.5)
    assert m.registry.get_sample_value("sidecar_clock_skew_seconds", {"provider": "default"}) == -2.5


def test_the_metric_families_keep_their_types_help_and_order() -> None:
    def families(m: Metrics) -> list[tuple[str, str, str]]:
        return [(f.name, f.type, f.documentation) for f in text_string_to_metric_families(text(m).decode())]

    assert families(Metrics()) == families(Metrics(local=False))


Process = Callable[[str, int], AbstractContextManager[None]]


@pytest.fixture
def process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Process]:
    """`with process(directory, pid):` runs as one of several worker processes sharing a directory: what
    prometheus_client's multiprocess value class (which takes the pid function) and its directory say."""
    classes: dict[tuple[str, int], Any] = {}

    @contextmanager
    def inside(name: str, pid: int) -> Iterator[None]:
        (tmp_path / name).mkdir(exist_ok=True)
        if (name, pid) not in classes:
            classes[name, pid] = values.MultiProcessValue(process_identifier=lambda: pid)  # type: ignore[no-untyped-call]
        with monkeypatch.context() as patch:
            patch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / name))
            patch.setattr(values, "ValueClass", classes[name, pid])
            yield

    yield inside
    for value_class in classes.values():
        value_class.close_all_files()


def summed(directory: Path) -> bytes:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def parsed(exposition: bytes) -> list[tuple[str, str, str, list[tuple[str, list[tuple[str, str]], float]]]]:
    """Families and samples in a fixed order: the collector's order follows the directory listing."""
    out = []
    for f in text_string_to_metric_families(exposition.decode()):
        samples = sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples)
        out.append((f.name, f.type, f.documentation, samples))
    return sorted(out)


def test_in_multiprocess_mode_the_shared_files_sum_to_what_prometheus_client_wrote(
    tmp_path: Path, process: Process
) -> None:
    last: dict[bool, Metrics] = {}
    for name, local in (("reference", False), ("local", True)):
        with process(name, 101):
            first = Metrics(local=local)
            request_path(first)
            background(first)
        with process(name, 202):
            second = last[local] = Metrics(local=local)
            request_path(second)
            second.in_flight.dec()
            second.clock_skew.labels("default").set(0.5)  # the newer value wins (livemostrecent)
            second.jwks_keys.labels("default").set(1)  # livemin
            second.config_info.labels("abc123").set(1)  # livemax
    assert type(last[True].auth_success).__module__ == "sidecar.metrics"
    expected = summed(tmp_path / "reference")
    assert b"sidecar_auth_success_total 10.0" in expected and b"sidecar_requests_in_flight 3.0" in expected
    assert b'sidecar_clock_skew_seconds{provider="default"} 0.5' in expected
    assert parsed(summed(tmp_path / "local")) == parsed(expected)
    # each process's own registry still shows its own values, as prometheus_client's metrics did
    assert without_created_values(text(last[True])) == without_created_values(text(last[False]))


def test_in_multiprocess_mode_a_process_continues_from_the_value_in_its_file(tmp_path: Path, process: Process) -> None:
    with process("shared", 303):
        first = Metrics()
        assert type(first.auth_success).__module__ == "sidecar.metrics"  # the default in multiprocess mode too
        first.auth_success.inc(5)
        first.validation_seconds.observe(0.001)
        # a second Metrics in the same process reads the same file, as a second prometheus_client metric would
        again = Metrics()
    assert again.registry.get_sample_value("sidecar_auth_success_total") == 5
    assert again.registry.get_sample_value("sidecar_validation_duration_seconds_count") == 1
    assert b"sidecar_auth_success_total 5.0" in summed(tmp_path / "shared")
