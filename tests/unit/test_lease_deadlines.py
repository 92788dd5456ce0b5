"""A worker never starts a job whose lease it can tell has ended.

The broker here is the memory broker behind a link the test controls: a reserve
answer that spends a while on the way back, renewals and reserves that fail while
the link is cut. Times are the fake clock's: the worker times lease deadlines with
it too (``FakeClock.monotonic``), so a lease "ends" when the test moves the clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TypeVar

import pytest

from sleipnir import App, Context, Worker
from sleipnir.brokers.base import Reservation
from sleipnir.brokers.memory import MemoryBroker
from sleipnir.errors import BrokerConnectionError
from sleipnir.outage import Outage
from sleipnir.testing import FakeClock

from ..waiting import wait_until
from .conftest import drain

T = TypeVar("T")


class Link(MemoryBroker):
    """A memory broker reached through a link that can be slow or cut."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.fake = clock
        self.late_answers = 0
        """Reserve answers (with jobs in them) still to come back late."""
        self.lateness = 0.0
        """How long such an answer spends on the way back (fake seconds)."""
        self.cut = False
        self.failed_renewals = 0
        self.released: list[str] = []

    def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Reservation]:
        if self.cut:
            raise BrokerConnectionError("link cut")
        answer = super().reserve(queues, limit, lease)
        if answer and self.late_answers:
            self.late_answers -= 1
            self.fake.advance(self.lateness)
        return answer

    def renew(self, reservations: Sequence[Reservation], lease: float) -> list[bool]:
        if self.cut:
            self.failed_renewals += 1
            raise BrokerConnectionError("link cut")
        return super().renew(reservations, lease)

    def release(
        self, reservations: Sequence[Reservation], ready_at: float | None = None
    ) -> list[bool]:
        self.released.extend(r.id for r in reservations)
        return super().release(reservations, ready_at)


@pytest.mark.parametrize(("lateness", "given_back"), [(6.0, True), (4.0, False)])
def test_a_reserve_answer_that_comes_back_after_half_the_lease_is_given_back_unstarted(
    lateness: float, given_back: bool
) -> None:
    clock = FakeClock()
    link = Link(clock)
    app = App(broker=link, clock=clock, lease=10.0)
    runs: list[tuple[int, int]] = []

    @app.task
    def work(ctx: Context, n: int) -> None:
        runs.append((n, ctx.attempt))

    handles = [work.delay(n) for n in range(3)]
    link.late_answers, link.lateness = 1, lateness
    worker = drain(app)
    assert sorted(runs) == [(0, 1), (1, 1), (2, 1)]  # each once; a give-back uses no try
    assert [h.status() for h in handles] == ["succeeded"] * 3
    if given_back:
        assert sorted(link.released) == sorted(h.id for h in handles)
    else:
        assert link.released == []
    assert worker.stats.lost_leases == 0


def test_held_jobs_whose_renewals_fail_past_their_lease_never_start_under_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    link = Link(clock)
    app = App(broker=link, clock=clock, lease=3.0)
    gate, started = threading.Event(), threading.Event()
    runs: list[tuple[str, int]] = []

    @app.task
    def slow(ctx: Context) -> str:
        runs.append(("slow", ctx.attempt))
        started.set()
        gate.wait(30)
        return "slow done"

    @app.task
    def quick(ctx: Context, n: int) -> None:
        runs.append((f"quick {n}", ctx.attempt))

    first = slow.delay()
    held = [quick.delay(n) for n in range(2)]
    worker = Worker(app, concurrency=1, prefetch=2, heartbeat=None)
    thread = threading.Thread(target=worker.run)
    caplog.set_level(logging.INFO, logger="sleipnir.worker")
    thread.start()
    try:
        wait_until(started.is_set, 10, "the slow job to start")
        wait_until(lambda: worker.held == 3, 10, "the two quick jobs to be held")
        link.cut = True
        clock.advance(3.5)  # every lease ends while no renewal can land
        wait_until(lambda: worker.stats.lost_leases >= 3, 10, "the ended leases to be counted")
        assert link.failed_renewals >= 1
        link.cut = False
        wait_until(
            lambda: any("came back to this worker" in r.getMessage() for r in caplog.records),
            10,
            "the slow job's new delivery to reach its worker",
        )
        gate.set()
        wait_until(
            lambda: all(h.status() == "succeeded" for h in [first, *held]),
            10,
            "every job to succeed",
        )
    finally:
        gate.set()
        worker.stop()
        thread.join(30)
    # The quick jobs ran once each, under their second delivery, never under the first
    # whose lease had ended; the slow one was not started again beside itself.
    assert sorted(runs) == [("quick 0", 2), ("quick 1", 2), ("slow", 1)]
    assert first.result(timeout=1.0) == "slow done"
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1  # the outage is logged once, not at every try
    assert any("reachable again after" in r.getMessage() for r in caplog.records)


def test_an_outage_is_logged_when_it_begins_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    outage = Outage("the broker", logging.getLogger("test.outage"), monotonic=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="test.outage")
    assert outage.ok() is None and not outage.down
    for _ in range(20):
        outage.failed("reserve failed", BrokerConnectionError("timed out"))
        now[0] += 0.5
    assert outage.down
    assert outage.ok() == pytest.approx(10.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "the broker unreachable: reserve failed, retrying until it answers (timed out)",
        "the broker reachable again after 10.0s (20 failed calls)",
    ]
    assert outage.outages == 1 and not outage.down
