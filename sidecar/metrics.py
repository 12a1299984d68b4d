"""Every metric the sidecar exports, declared in one place on a registry owned by the app.

The request path counts in plain Python numbers: an increment is an attribute add, with no lock and no call
into prometheus_client. One collector (`_LocalCollector`) turns them into metric families when `/metrics` is
scraped, with the names, help, labels, buckets and zero series prometheus_client's own metrics had (the
tests compare the two expositions). In multiprocess mode (several workers, `PROMETHEUS_MULTIPROC_DIR` set)
any worker's scrape sums every process's file, so each change is also written to this process's file as it
happens: one mmap write, still without prometheus_client's lock. `Metrics(local=False)` builds the same
declarations as prometheus_client metrics (the tests' reference).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import metrics as _client_metrics
from prometheus_client import values as _client_values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString

from sidecar.errors import AUTH_REASONS, REQUEST_REASONS, UPSTREAM_REASONS

# Validation is tens of microseconds on a cache hit and about a millisecond on a cold RSA verify.
_VALIDATION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
_UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_MOST_RECENT = ("mostrecent", "livemostrecent")  # gauge modes whose values carry a timestamp
_Labels = tuple[tuple[str, str], ...]  # a series' labels as (name, value) pairs

JWKS_FETCH_RESULTS = ("success", "http_error", "timeout", "invalid", "refused")
WEBSOCKET_ENDS = ("client_closed", "app_closed", "token_expired", "refused_by_app", "error")
KEY_IGNORED_REASONS = ("weak", "symmetric", "enc", "unsupported", "invalid")
CONNECTION_CLOSE_REASONS = (
    "header_timeout",
    "idle_timeout",
    "body_timeout",
    "headers_too_large",
    "too_many_headers",
    "request_line_too_long",
    "bad_request",
)


def exposition(m: Metrics) -> bytes:
    """The text format: this process's registry, or the sum over every worker in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(m.registry)


# The request path's metric types: what the code calls, whichever backend is behind it.
class Counting(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Level(Protocol):
    def inc(self, amount: float = 1) -> None: ...
    def dec(self, amount: float = 1) -> None: ...
    def set(self, value: float) -> None: ...


class Observing(Protocol):
    def observe(self, amount: float) -> None: ...


S = TypeVar("S", covariant=True)


class Labelled(Protocol[S]):
    def labels(self, *values: str, **kw: str) -> S: ...


# The local values. No lock anywhere: a worker is one process running one asyncio loop, and nothing in the
# sidecar touches a metric from another thread, so an update can never interleave with another update or
# with the scrape that reads it. (A thread that did update them would need its own metric with a lock.)


class _CounterValue:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount

    def export(self, family: Metric, values: tuple[str, ...], created: bool) -> None:
        assert isinstance(family, CounterMetricFamily)
        family.add_metric(values, self.value, self.created if created else None)


class _GaugeValue:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def export(self, family: Metric, values: tuple[str, ...], created: bool) -> None:
        assert isinstance(family, GaugeMetricFamily)
        family.add_metric(values, self.value)


def bucket(bounds: tuple[float, ...], amount: float) -> int:
    """The first bucket whose bound is >= amount (the last bound is +Inf), or -1 for NaN, which lands in none
    (nor the count), as in prometheus_client. A scan from the first bound, not `bisect_left`: compiled, a bound
    costs a few instructions and most observations land in the first few, where the call cost ~650."""
    for i, bound in enumerate(bounds):
        if amount <= bound:
            return i
    return -1


class _HistogramValue:
    __slots__ = ("bounds", "counts", "created", "les", "sum")

    def __init__(self, bounds: tuple[float, ...], les: tuple[str, ...]) -> None:
        self.bounds, self.les = bounds, les
        self.counts = [0.0] * len(bounds)  # per bucket, not cumulative: one add per observation
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        i = bucket(self.bounds, amount)
        if i >= 0:
            self.counts[i] += 1

    def export(self, family: Metric, values: tuple[str, ...], created: bool) -> None:
        assert isinstance(family, HistogramMetricFamily)
        buckets, total = [], 0.0
        for le, n in zip(self.les, self.counts, strict=True):
            total += n
            buckets.append((le, total))
        family.add_metric(values, buckets, self.sum)
        if created:
            labels = dict(zip(family._labelnames, values, strict=True))
            family.samples.append(Sample(family.name + "_created", labels, self.created))


# Multiprocess mode: the same values, each change also written to this process's file in the shared directory,
# where any worker's MultiProcessCollector sums it on a scrape. prometheus_client's own value class
# (MmapedValue) opens the file and makes the key, so the name, the layout and the gauge modes are exactly its
# own; the write then skips its lock and its per-call fork check (a getpid). That is safe because a Metrics
# object lives in the process that built it: workers and the keys process build theirs after the fork.


def _cell(typ: str, metric: str, name: str, labels: _Labels, doc: str, mode: str = "") -> Any:
    """This process's mmap file and the key of one value in it, and the value it holds now."""
    value = _client_values.ValueClass(
        typ, metric, name, [k for k, _ in labels], [v for _, v in labels], doc, multiprocess_mode=mode
    )
    return value._file, value._key, value.get()


class _SharedCounterValue(_CounterValue):
    __slots__ = ("file", "key")

    def __init__(self, name: str, labels: _Labels, doc: str) -> None:
        super().__init__()
        self.file, self.key, self.value = _cell("counter", name, name + "_total", labels, doc)

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount
        self.file.write_value(self.key, self.value, 0.0)


class _SharedGaugeValue(_GaugeValue):
    __slots__ = ("file", "key", "stamped")

    def __init__(self, name: str, labels: _Labels, doc: str, mode: str) -> None:
        super().__init__()
        self.file, self.key, self.value = _cell("gauge", name, name, labels, doc, mode)
        self.stamped = mode in _MOST_RECENT  # the collector keeps the value with the newest timestamp

    def inc(self, amount: float = 1) -> None:
        self.value += amount
        self.file.write_value(self.key, self.value, 0.0)

    def dec(self, amount: float = 1) -> None:
        self.value -= amount
        self.file.write_value(self.key, self.value, 0.0)

    def set(self, value: float) -> None:
        self.value = float(value)
        self.file.write_value(self.key, self.value, time.time() if self.stamped else 0.0)


class _SharedHistogramValue(_HistogramValue):
    __slots__ = ("bucket_keys", "file", "sum_key")

    def __init__(self, name: str, labels: _Labels, doc: str, bounds: tuple[float, ...], les: tuple[str, ...]) -> None:
        super().__init__(bounds, les)
        self.file, self.sum_key, self.sum = _cell("histogram", name, name + "_sum", labels, doc)
        self.bucket_keys = []
        for i, le in enumerate(les):
            _, key, self.counts[i] = _cell("histogram", name, name + "_bucket", (*labels, ("le", le)), doc)
            self.bucket_keys.append(key)

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.file.write_value(self.sum_key, self.sum, 0.0)
        i = bucket(self.bounds, amount)
        if i >= 0:
            self.counts[i] += 1
            self.file.write_value(self.bucket_keys[i], self.counts[i], 0.0)


V = TypeVar("V", _CounterValue, _GaugeValue, _HistogramValue)


class _Family(Generic[V]):
    """A labelled metric: one child per label values, made on first use and then found with one dict lookup."""

    __slots__ = ("children", "labelnames", "make")

    def __init__(self, labelnames: tuple[str, ...], make: Callable[[_Labels], V]) -> None:
        self.labelnames = labelnames
        self.make: Callable[[_Labels], V] = make  # given the child's labels as (name, value) pairs
        self.children: dict[tuple[str, ...], V] = {}

    def labels(self, *values: str, **kw: str) -> V:
        child = self.children.get(values)
        if child is None or kw:
            return self._child(values, kw)
        return child

    def _child(self, values: tuple[str, ...], kw: dict[str, str]) -> V:
        # prometheus_client's rules, so a call that fails there fails here
        if values and kw:
            raise ValueError("Can't pass both *args and **kwargs")
        if kw:
            if sorted(kw) != sorted(self.labelnames):
                raise ValueError("Incorrect label names")
            values = tuple(kw[name] for name in self.labelnames)
        elif len(values) != len(self.labelnames):
            raise ValueError("Incorrect label count")
        key = tuple(str(v) for v in values)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self.make(tuple(zip(self.labelnames, key, strict=True)))
        return child


@dataclass(frozen=True)
class _Declared:
    family: Callable[[], Metric]  # an empty family of the metric's type, name, help and label names
    children: Mapping[tuple[str, ...], _CounterValue | _GaugeValue | _HistogramValue]


class _LocalCollector(Collector):
    """Turns the local values into metric families when the registry is collected (a scrape, or a test's
    get_sample_value): the only moment their numbers reach prometheus_client."""

    def __init__(self, declared: list[_Declared]) -> None:
        self.declared = declared

    def collect(self) -> Iterator[Metric]:
        created = _client_metrics._use_created  # PROMETHEUS_DISABLE_CREATED_SERIES, as for its own metrics
        for d in self.declared:
            family = d.family()
            for values, value in d.children.items():
                value.export(family, values, created)
            yield family


class _Declare:
    """Builds each declared metric: local values (also written to the shared files in multiprocess mode), or
    prometheus_client's own metrics (`local=False`: what the sidecar used before; the tests' reference)."""

    def __init__(self, registry: CollectorRegistry, local: bool, private: bool = False) -> None:
        self.registry, self.local = registry, local
        self.shared = not private and bool(getattr(_client_values.ValueClass, "_multiprocess", False))
        self.declared: list[_Declared] = []

    def _add(self, family: Callable[[], Metric], values: _Family[V]) -> _Family[V]:
        self.declared.append(_Declared(family, values.children))
        return values

    def counter(self, name: str, doc: str) -> Counting:
        if not self.local:
            return Counter(name, doc, registry=self.registry)
        return self.counters(name, doc, ()).labels()

    def counters(self, name: str, doc: str, labels: Sequence[str]) -> Labelled[Counting]:
        if not self.local:
            return Counter(name, doc, labels, registry=self.registry)
        make = (lambda ls: _SharedCounterValue(name, ls, doc)) if self.shared else (lambda _: _CounterValue())
        return self._add(lambda: CounterMetricFamily(name, doc, labels=labels), _Family(tuple(labels), make))

    def gauge(self, name: str, doc: str, mode: str) -> Level:
        if not self.local:
            return Gauge(name, doc, registry=self.registry, multiprocess_mode=mode)  # type: ignore[arg-type]
        return self.gauges(name, doc, (), mode).labels()

    def gauges(self, name: str, doc: str, labels: Sequence[str], mode: str) -> Labelled[Level]:
        if not self.local:
            return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)  # type: ignore[arg-type]
        make = (lambda ls: _SharedGaugeValue(name, ls, doc, mode)) if self.shared else (lambda _: _GaugeValue())
        return self._add(lambda: GaugeMetricFamily(name, doc, labels=labels), _Family(tuple(labels), make))

    def histogram(self, name: str, doc: str, buckets: Sequence[float]) -> Observing:
        if not self.local:
            return Histogram(name, doc, buckets=buckets, registry=self.registry)
        bounds = (*(float(b) for b in buckets), INF)
        les = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]
        make: Callable[[_Labels], _HistogramValue]
        if self.shared:
            make = lambda ls: _SharedHistogramValue(name, ls, doc, bounds, les)  # noqa: E731
        else:
            make = lambda _: _HistogramValue(bounds, les)  # noqa: E731
        return self._add(lambda: HistogramMetricFamily(name, doc, labels=()), _Family((), make)).labels()

    def done(self) -> None:
        if self.local:
            self.registry.register(_LocalCollector(self.declared))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, local: bool = True, private: bool = False) -> None:
        """`local=False`: prometheus_client's own metrics, each update under its lock (the tests' reference).
        `private=True`: counted in this object alone, never in the pod's shared files (`sidecar explain`)."""
        self.registry = registry or CollectorRegistry(auto_describe=True)
        d = _Declare(self.registry, local, private)
        self.auth_success = d.counter("sidecar_auth_success", "Requests with a verified token")
        self.auth_failures = d.counters(
            "sidecar_auth_failures", "Requests rejected for their token, by reason", ["reason"]
        )
        self.grace_accepted = d.counter("sidecar_auth_grace_accepted", "Expired tokens accepted inside expired_grace")
        self.future_iat = d.counter(
            "sidecar_auth_future_iat", "Tokens whose iat was beyond leeway in the future (clock skew)"
        )
        self.public_requests = d.counter(
            "sidecar_public_requests", "Requests forwarded without a token on a public path"
        )
        self.requests_rejected = d.counters(
            "sidecar_requests_rejected", "Malformed HTTP requests answered by the sidecar, by reason", ["reason"]
        )
        self.cors_preflights = d.counters("sidecar_cors_preflights", "CORS preflights answered, by result", ["result"])
        self.upstream_errors = d.counters("sidecar_upstream_errors", "Upstream faults, by kind", ["kind"])
        self.in_flight = d.gauge("sidecar_requests_in_flight", "Requests being handled", "livesum")
        self.validation_seconds = d.histogram(
            "sidecar_validation_duration_seconds",
            "Time to check a token (cache hit or full verify)",
            _VALIDATION_BUCKETS,
        )
        self.upstream_seconds = d.histogram(
            "sidecar_upstream_duration_seconds", "Time until the app's response headers arrived", _UPSTREAM_BUCKETS
        )
        self.token_cache = d.counters(
            "sidecar_token_cache_lookups", "Verified-token cache lookups, by result", ["result"]
        )
        self.token_cache_entries = d.gauge(
            "sidecar_token_cache_entries", "Verified tokens held in the cache (bounded by token_cache_size)", "livesum"
        )
        self.jwks_fetches = d.counters(
            "sidecar_jwks_fetches", "JWKS and discovery fetches, by provider and result", ["provider", "result"]
        )
        self.jwks_keys = d.gauges("sidecar_jwks_keys_loaded", "Usable keys, by provider", ["provider"], "livemin")
        self.jwks_keys_ignored = d.counters(
            "sidecar_jwks_keys_ignored", "JWKS entries never used, by provider and reason", ["provider", "reason"]
        )
        self.jwks_age = d.gauges(
            "sidecar_jwks_age_seconds",
            "Seconds since the key set was last fetched successfully",
            ["provider"],
            "livemax",
        )
        self.jwks_stale = d.gauges(
            "sidecar_jwks_stale_seconds",
            "Seconds the key set is past its refresh time (0 when fresh)",
            ["provider"],
            "livemax",
        )
        self.jwks_last_success = d.gauges(
            "sidecar_jwks_last_success_timestamp_seconds",
            "Wall time of the last successful fetch",
            ["provider"],
            "livemax",
        )
        self.jwks_last_change = d.gauges(
            "sidecar_jwks_last_change_timestamp_seconds",
            "Wall time the set of kids last changed",
            ["provider"],
            "livemax",
        )
        self.jwks_refetches = d.counters(
            "sidecar_jwks_unknown_kid_refetches",
            "Refetches asked for by an unknown kid, by outcome",
            ["provider", "outcome"],
        )
        self.clock_skew = d.gauges(
            "sidecar_clock_skew_seconds",
            "This host's clock minus the IdP's (from JWKS Date headers)",
            ["provider"],
            "livemostrecent",
        )
        self.route_requests = d.counters(
            "sidecar_route_requests",
            "Requests by route rule name and outcome (allowed, or the reason); only with route_metrics: true",
            ["route", "outcome"],
        )
        self.websockets = d.counters(
            "sidecar_websocket_sessions", "WebSocket sessions proxied, by how they ended", ["end"]
        )
        self.ready = d.gauge("sidecar_ready", "1 when every provider has usable keys", "livemin")
        self.kidless_attempts = d.counters(
            "sidecar_auth_kidless_attempts",
            "Signature checks of tokens without kid against a candidate key, by provider and result",
            ["provider", "result"],
        )
        self.connections_closed = d.counters(
            "sidecar_connections_closed",
            "Connections the sidecar closed for a limit or a timeout, by reason",
            ["reason"],
        )
        # report mode: what would have been refused for its token, kept apart from sidecar_auth_failures_total
        # so every existing alert and panel still means "refused"
        self.auth_reported = d.counters(
            "sidecar_auth_reported",
            "Requests forwarded in report mode that enforce mode would refuse, by reason",
            ["reason"],
        )
        self.config_reloads = d.counters(
            "sidecar_config_reloads",
            "Config reloads, by result (ok: applied; error: refused, the old config stays), once per pod",
            ["result"],
        )
        self.config_info = d.gauges(
            "sidecar_config_info",
            "1 for the hash of the config in force (both show while workers switch)",
            ["hash"],
            "livemax",
        )
        d.done()
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
        for reason in CONNECTION_CLOSE_REASONS:
            self.connections_closed.labels(reason)
        for reason in AUTH_REASONS:
            self.auth_failures.labels(reason)
            self.auth_reported.labels(reason)
        for reason in REQUEST_REASONS:
            self.requests_rejected.labels(reason)
        for reason in UPSTREAM_REASONS:
            self.upstream_errors.labels(reason)
        for result in ("allowed", "rejected"):
            self.cors_preflights.labels(result)
        for result in ("hit", "miss", "refused"):
            self.token_cache.labels(result)
        for end in WEBSOCKET_ENDS:
            self.websockets.labels(end)

    def provider(self, name: str) -> None:
        """Create a provider's series at zero, so alerts and dashboards see them before the first event."""
        for result in JWKS_FETCH_RESULTS:
            self.jwks_fetches.labels(name, result)
        for reason in KEY_IGNORED_REASONS:
            self.jwks_keys_ignored.labels(name, reason)
        for outcome in ("fetched", "suppressed"):
            self.jwks_refetches.labels(name, outcome)
        self.jwks_keys.labels(name)
        for result in ("verified", "failed"):
            self.kidless_attempts.labels(name, result)
        self.clock_skew.labels(name)
        self.jwks_age.labels(name)
        self.jwks_stale.labels(name)

    def routes(self, names: list[str]) -> None:
        """With route_metrics: each rule's `allowed` series at zero from the start (rejections by reason
        appear when they happen: rules times reasons would be a lot of empty series)."""
        for name in names:
            self.route_requests.labels(name, "allowed")
