"""The app side's exchange outcome, as the request's coroutine (run by `drive`) sees it. The pool, the relay
and the response rewriting are exercised end to end in test_http_server.py."""

from __future__ import annotations

from sidecar import errors
from sidecar.http.upstream import Outcome, drive


async def _request(outcome: Outcome, seen: list[str]) -> None:
    seen.append("sent")
    try:
        await outcome
    except errors.Rejection as r:
        seen.append(r.reason)
        return
    seen.append("answered")


def test_a_request_resumes_inside_the_read_that_completes_its_exchange() -> None:
    outcome, seen = Outcome(), []
    drive(_request(outcome, seen))
    assert seen == ["sent"]  # waiting for the app
    outcome.end(None)
    assert seen == ["sent", "answered"]  # at once: no loop round in between (none runs in this test)


def test_a_failed_exchange_raises_its_failure_in_the_waiting_request() -> None:
    outcome, seen = Outcome(), []
    drive(_request(outcome, seen))
    outcome.end(errors.UpstreamTimeout())
    assert seen == ["sent", errors.UpstreamTimeout.reason]


def test_an_exchange_that_ended_before_it_was_awaited_does_not_suspend_the_request() -> None:
    outcome, seen = Outcome(), []
    outcome.end(None)
    drive(_request(outcome, seen))
    assert seen == ["sent", "answered"]


def test_only_the_first_end_of_an_exchange_counts() -> None:
    outcome, seen = Outcome(), []
    drive(_request(outcome, seen))
    outcome.end(errors.UpstreamUnavailable("the app closed the connection"))
    outcome.end(None)  # e.g. the connection's close after a timeout already ended it
    assert seen == ["sent", errors.UpstreamUnavailable.reason]
    assert outcome.ended
