"""PostgreSQL leases run on the server's clock, whatever the clock of the host that asks.

A request can reach the server long after it was sent (a link that stalled for
20 s), or come from a host whose clock is off: with the caller's idea of "now",
the first leases jobs for a lease that already ran out and the second takes jobs
whose lease still runs. These tests stand in for both with a host clock set an
hour off (``SystemClock.time`` patched): the broker must decide with the server's
clock. A broker given a clock of its own (a test's FakeClock) keeps using that one;
the contract suite covers it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from sleipnir.brokers.base import Envelope
from sleipnir.brokers.postgres import PostgresBroker
from sleipnir.clock import SystemClock

from .conftest import shared_pg_url, wait_until

pytestmark = pytest.mark.integration

HOUR = 3600.0


@pytest.fixture
def url() -> Iterator[str]:
    with shared_pg_url() as url:
        yield url


def _server_time(url: str) -> float:
    with psycopg.connect(url.split("?")[0]) as conn:
        row = conn.execute("SELECT extract(epoch from clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def _lease_left(url: str, schema: str, job_id: str) -> float:
    """Seconds the job's lease still runs, by the server's clock."""
    with psycopg.connect(url.split("?")[0]) as conn:
        row = conn.execute(
            f"SELECT visible_at - extract(epoch from clock_timestamp()) FROM {schema}.jobs"
            " WHERE id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None
    return float(row[0])


def _host_clock_off_by(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    real = time.time
    monkeypatch.setattr(SystemClock, "time", lambda self: real() + seconds)


def test_a_host_whose_clock_is_behind_takes_a_lease_that_ran_out_and_leases_from_server_time(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = PostgresBroker(url, clock=SystemClock())
    try:
        broker.enqueue([Envelope("a", "q", b"{}")])
        [first] = broker.reserve(["q"], 1, 0.2)
        wait_until(lambda: _server_time(url) > first.lease_until, 10.0, "the lease never ran out")
        _host_clock_off_by(monkeypatch, -HOUR)
        before = _server_time(url)
        [again] = broker.reserve(["q"], 1, 30.0)
        assert (again.id, again.attempt, again.lost) == ("a", 2, 1)
        # The lease ends 30 s after the server read its clock, not an hour ago.
        assert again.lease_until >= before + 30.0
        assert _lease_left(url, broker._s, "a") > 25.0
        assert broker.renew([first], 30.0) == [False]  # the old lease is gone for good
        assert broker.renew([again], 60.0) == [True]
        assert _lease_left(url, broker._s, "a") > 55.0  # renewed from now, not from an hour ago
        assert broker.ack([again]) == [True]
        assert broker.stats()[0].ready == 0
    finally:
        broker.close()


def test_a_host_whose_clock_is_ahead_leaves_a_running_lease_alone(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = PostgresBroker(url, clock=SystemClock())
    try:
        broker.enqueue([Envelope("a", "q", b"{}")])
        [held] = broker.reserve(["q"], 1, 30.0)
        _host_clock_off_by(monkeypatch, HOUR)
        assert broker.reserve(["q"], 1, 30.0) == []  # its lease runs for 30 s more
        [stats] = broker.stats()
        assert (stats.ready, stats.running) == (0, 1)
        assert broker.ack([held]) == [True]  # and its holder may still settle it
    finally:
        broker.close()
