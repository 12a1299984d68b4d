"""The app side's exchange outcome, as the request's coroutine (run by `drive`) sees it. The pool, the relay
and the response rewriting are exercised end to end in test_http_server.py."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from sidecar import errors
from sidecar.http.upstream import _DROPPED_LENGTHS, _HOP, Outcome, _dropped, drive


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
    drive(_request(outcome, seen).__await__())
    assert seen == ["sent"]  # waiting for the app
    outcome.end(None)
    assert seen == ["sent", "answered"]  # at once: no loop round in between (none runs in this test)


def test_a_failed_exchange_raises_its_failure_in_the_waiting_request() -> None:
    outcome, seen = Outcome(), []
    drive(_request(outcome, seen).__await__())
    outcome.end(errors.UpstreamTimeout())
    assert seen == ["sent", errors.UpstreamTimeout.reason]


def test_an_exchange_that_ended_before_it_was_awaited_does_not_suspend_the_request() -> None:
    outcome, seen = Outcome(), []
    outcome.end(None)
    drive(_request(outcome, seen).__await__())
    assert seen == ["sent", "answered"]


def test_only_the_first_end_of_an_exchange_counts() -> None:
    outcome, seen = Outcome(), []
    drive(_request(outcome, seen).__await__())
    outcome.end(errors.UpstreamUnavailable("the app closed the connection"))
    outcome.end(None)  # e.g. the connection's close after a timeout already ended it
    assert seen == ["sent", errors.UpstreamUnavailable.reason]
    assert outcome.ended


async def test_a_request_waiting_for_a_future_or_a_loop_round_resumes_by_itself() -> None:
    loop = asyncio.get_running_loop()
    body: asyncio.Future[str] = loop.create_future()
    seen: list[str] = []

    async def request() -> None:
        seen.append(await body)
        await asyncio.sleep(0)  # a bare yield: resumed in the next loop round
        seen.append("after a round")

    drive(request().__await__())
    assert seen == []
    body.set_result("body")
    for _ in range(3):
        await asyncio.sleep(0)
    assert seen == ["body", "after a round"]


@given(st.one_of(st.sampled_from(sorted(_HOP | {b"content-length"})), st.binary(min_size=1, max_size=40)), st.data())
def test_the_length_test_before_a_response_name_lookup_never_keeps_a_dropped_name(
    name: bytes, data: st.DataObject
) -> None:
    spelled = bytes(data.draw(st.sampled_from([c, c ^ 0x20])) if 97 <= c <= 122 else c for c in name)
    if _dropped(spelled):
        assert _DROPPED_LENGTHS >> len(spelled) & 1
