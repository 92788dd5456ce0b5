"""Idempotency keys and unique tasks: one claim mechanism, on each embedded backend."""

from __future__ import annotations

import pytest

from sleipnir import App, KeyReusedError
from sleipnir.brokers.base import Envelope
from sleipnir.errors import BrokerConnectionError, BrokerError
from sleipnir.testing import FakeClock

from .conftest import drain


def ready(app: App) -> int:
    return sum(s.ready for s in app.broker.stats())


def test_the_same_key_and_call_give_the_same_job_and_store_one(app: App) -> None:
    @app.task
    def invoice(order: int) -> int:
        return order

    first = invoice.enqueue([42], key="invoice-42")
    again = invoice.enqueue([42], key="invoice-42")
    assert again.id == first.id
    assert ready(app) == 1
    drain(app)
    assert again.result(timeout=1.0) == 42


def test_the_same_key_with_another_call_raises_and_stores_nothing(app: App) -> None:
    @app.task
    def invoice(order: int) -> int:
        return order

    first = invoice.enqueue([42], key="k")
    with pytest.raises(KeyReusedError) as caught:
        invoice.enqueue([43], key="k")
    assert caught.value.job_id == first.id
    assert ready(app) == 1


def test_a_key_is_free_again_after_its_window(app: App, clock: FakeClock) -> None:
    @app.task
    def ping() -> None: ...

    first = ping.enqueue(key="k", key_window=60.0)
    clock.advance(61.0)
    assert ping.enqueue(key="k", key_window=60.0).id != first.id
    assert ready(app) == 2


def test_a_unique_task_gives_back_the_queued_job_until_it_finished(app: App) -> None:
    ran: list[int] = []

    @app.task(unique_for=600.0)
    def refresh(user: int) -> None:
        ran.append(user)

    a = refresh.delay(1)
    assert refresh.delay(1).id == a.id
    b = refresh.delay(2)  # other arguments: another job
    assert b.id != a.id
    assert [h.id for h in refresh.map([(1,), (2,), (3,)])][:2] == [a.id, b.id]
    assert ready(app) == 3
    drain(app)
    assert sorted(ran) == [1, 2, 3]
    # Finished for good: the key was freed, so the next call is a new job.
    c = refresh.delay(1)
    assert c.id != a.id
    assert ready(app) == 1


def test_a_unique_job_keeps_its_key_while_it_waits_for_a_retry(app: App, clock: FakeClock) -> None:
    calls = 0

    @app.task(unique_for=600.0, retries=1, backoff=5.0)
    def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first run fails")

    a = flaky.delay()
    drain(app)
    assert a.status() == "retrying"
    assert flaky.delay().id == a.id
    clock.advance(10.0)
    drain(app)
    assert a.status() == "succeeded"
    assert flaky.delay().id != a.id


def test_a_refused_enqueue_frees_the_key_for_the_retry(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task
    def ping() -> None: ...

    def refuse(envelopes: list[Envelope]) -> None:
        raise BrokerError("broker down")

    with monkeypatch.context() as patched:
        patched.setattr(app.broker, "enqueue", refuse)
        with pytest.raises(BrokerError):
            ping.enqueue(key="k")
    handle = ping.enqueue(key="k")
    assert ready(app) == 1
    assert ping.enqueue(key="k").id == handle.id


@pytest.mark.parametrize("stored", [False, True], ids=["never-stored", "answer-lost"])
def test_a_retry_under_the_same_key_after_a_lost_connection_stores_the_job_exactly_once(
    app: App, monkeypatch: pytest.MonkeyPatch, stored: bool
) -> None:
    """After BrokerConnectionError the job was stored or not (a failed request never lands
    later); the same call retried under its key gives one job either way, never none."""
    runs: list[int] = []

    @app.task
    def invoice(order: int) -> None:
        runs.append(order)

    real = app.broker.enqueue

    def cut(envelopes: list[Envelope]) -> None:
        if stored:
            real(envelopes)  # stored, and the answer was lost on the way back
        raise BrokerConnectionError("connection lost")

    with monkeypatch.context() as patched:
        patched.setattr(app.broker, "enqueue", cut)
        with pytest.raises(BrokerConnectionError):
            invoice.enqueue([42], key="invoice-42")
    first = invoice.enqueue([42], key="invoice-42")
    again = invoice.enqueue([42], key="invoice-42")
    assert again.id == first.id
    assert ready(app) == 1
    drain(app)
    assert runs == [42]
    assert first.status() == "succeeded"
    assert invoice.enqueue([42], key="invoice-42").id == first.id  # finished: not again
    drain(app)
    assert runs == [42]


def test_bad_unique_for_and_key_window_are_refused(app: App) -> None:
    with pytest.raises(ValueError, match="unique_for"):
        app.task(unique_for=0.0)(lambda: None)

    @app.task
    def ping() -> None: ...

    with pytest.raises(ValueError, match="key_window"):
        ping.enqueue(key="k", key_window=float("nan"))
    assert ready(app) == 0
