"""Every metric the sidecar exports, declared in one place on a registry owned by the app."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from sidecar.errors import AUTH_REASONS, REQUEST_REASONS, UPSTREAM_REASONS

# Validation is tens of microseconds on a cache hit and about a millisecond on a cold RSA verify.
_VALIDATION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
_UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

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


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.auth_success = Counter("sidecar_auth_success", "Requests with a verified token", registry=r)
        self.auth_failures = Counter(
            "sidecar_auth_failures", "Requests rejected for their token, by reason", ["reason"], registry=r
        )
        self.grace_accepted = Counter(
            "sidecar_auth_grace_accepted", "Expired tokens accepted inside expired_grace", registry=r
        )
        self.future_iat = Counter(
            "sidecar_auth_future_iat",
            "Tokens whose iat was beyond leeway in the future (clock skew)",
            registry=r,
        )
        self.public_requests = Counter(
            "sidecar_public_requests", "Requests forwarded without a token on a public path", registry=r
        )
        self.requests_rejected = Counter(
            "sidecar_requests_rejected",
            "Malformed HTTP requests answered by the sidecar, by reason",
            ["reason"],
            registry=r,
        )
        self.cors_preflights = Counter(
            "sidecar_cors_preflights", "CORS preflights answered, by result", ["result"], registry=r
        )
        self.upstream_errors = Counter("sidecar_upstream_errors", "Upstream faults, by kind", ["kind"], registry=r)
        self.in_flight = Gauge(
            "sidecar_requests_in_flight", "Requests being handled", registry=r, multiprocess_mode="livesum"
        )
        self.validation_seconds = Histogram(
            "sidecar_validation_duration_seconds",
            "Time to check a token (cache hit or full verify)",
            buckets=_VALIDATION_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "sidecar_upstream_duration_seconds",
            "Time until the app's response headers arrived",
            buckets=_UPSTREAM_BUCKETS,
            registry=r,
        )
        self.token_cache = Counter(
            "sidecar_token_cache_lookups", "Verified-token cache lookups, by result", ["result"], registry=r
        )
        self.token_cache_entries = Gauge(
            "sidecar_token_cache_entries",
            "Verified tokens held in the cache (bounded by token_cache_size)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.jwks_fetches = Counter(
            "sidecar_jwks_fetches",
            "JWKS and discovery fetches, by provider and result",
            ["provider", "result"],
            registry=r,
        )
        self.jwks_keys = Gauge(
            "sidecar_jwks_keys_loaded",
            "Usable keys, by provider",
            ["provider"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.jwks_keys_ignored = Counter(
            "sidecar_jwks_keys_ignored",
            "JWKS entries never used, by provider and reason",
            ["provider", "reason"],
            registry=r,
        )
        self.jwks_age = Gauge(
            "sidecar_jwks_age_seconds",
            "Seconds since the key set was last fetched successfully",
            ["provider"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.jwks_stale = Gauge(
            "sidecar_jwks_stale_seconds",
            "Seconds the key set is past its refresh time (0 when fresh)",
            ["provider"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.jwks_last_success = Gauge(
            "sidecar_jwks_last_success_timestamp_seconds",
            "Wall time of the last successful fetch",
            ["provider"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.jwks_last_change = Gauge(
            "sidecar_jwks_last_change_timestamp_seconds",
            "Wall time the set of kids last changed",
            ["provider"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.jwks_refetches = Counter(
            "sidecar_jwks_unknown_kid_refetches",
            "Refetches asked for by an unknown kid, by outcome",
            ["provider", "outcome"],
            registry=r,
        )
        self.clock_skew = Gauge(
            "sidecar_clock_skew_seconds",
            "This host's clock minus the IdP's (from JWKS Date headers)",
            ["provider"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.route_requests = Counter(
            "sidecar_route_requests",
            "Requests by route rule name and outcome (allowed, or the reason); only with route_metrics: true",
            ["route", "outcome"],
            registry=r,
        )
        self.websockets = Counter(
            "sidecar_websocket_sessions", "WebSocket sessions proxied, by how they ended", ["end"], registry=r
        )
        self.ready = Gauge(
            "sidecar_ready", "1 when every provider has usable keys", multiprocess_mode="livemin", registry=r
        )
        self.kidless_attempts = Counter(
            "sidecar_auth_kidless_attempts",
            "Signature checks of tokens without kid against a candidate key, by provider and result",
            ["provider", "result"],
            registry=r,
        )
        self.connections_closed = Counter(
            "sidecar_connections_closed",
            "Connections the sidecar closed for a limit or a timeout, by reason",
            ["reason"],
            registry=r,
        )
        # report mode: what would have been refused for its token, kept apart from sidecar_auth_failures_total
        # so every existing alert and panel still means "refused"
        self.auth_reported = Counter(
            "sidecar_auth_reported",
            "Requests forwarded in report mode that enforce mode would refuse, by reason",
            ["reason"],
            registry=r,
        )
        self.config_reloads = Counter(
            "sidecar_config_reloads",
            "Config reloads, by result (ok: applied; error: refused, the old config stays), once per pod",
            ["result"],
            registry=r,
        )
        self.config_info = Gauge(
            "sidecar_config_info",
            "1 for the hash of the config in force (both show while workers switch)",
            ["hash"],
            multiprocess_mode="livemax",
            registry=r,
        )
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
        for result in ("hit", "miss"):
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
