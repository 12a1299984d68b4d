"""The closed list of failure reasons: every reason is complete, unique and counted."""

from __future__ import annotations

from sidecar.errors import AUTH_REASONS, all_reasons
from sidecar.metrics import Metrics
from sidecar.responses import rejection, www_authenticate

REQUIRED = {
    "missing_token",
    "malformed",
    "unsupported_alg",
    "unknown_kid",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "issuer_mismatch",
    "audience_mismatch",
    "missing_claim",
    "invalid_claim",
    "multiple_tokens",
    "token_too_large",
    "keys_unavailable",
}


def test_every_reason_the_contract_names_exists_with_status_error_and_label() -> None:
    assert set(AUTH_REASONS) >= REQUIRED
    reasons = [c.reason for c in all_reasons()]
    assert len(reasons) == len(set(reasons))
    for cls in all_reasons():
        assert cls.status in (400, 401, 403, 413, 414, 431, 502, 503, 504)
        assert cls.family in ("auth", "request", "upstream") and cls.summary


def test_every_auth_reason_has_a_zero_series_from_the_start() -> None:
    m = Metrics()
    for reason in AUTH_REASONS:
        assert m.registry.get_sample_value("sidecar_auth_failures_total", {"reason": reason}) == 0


def test_www_authenticate_follows_rfc_6750() -> None:
    from sidecar import errors

    assert www_authenticate("r", errors.MissingToken()) == 'Bearer realm="r"'
    value = www_authenticate("r", errors.Expired('expired "now"\\ \r\n'))
    assert value == 'Bearer realm="r", error="invalid_token", error_description="expired \'now\'    "'
    resp = rejection(errors.KeysUnavailable(), "r")
    assert resp.status == 503 and resp.headers["Retry-After"] == "5" and "WWW-Authenticate" not in resp.headers
    assert (
        rejection(errors.MultipleTokens(), "r")
        .headers["WWW-Authenticate"]
        .endswith(
            'error="invalid_request", error_description="more than one token in the request (RFC 6750 section 2)"'
        )
    )
