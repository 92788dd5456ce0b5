"""Periodic jobs on the fake clock: ticks, one firing per tick among many schedulers, catch-up."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from sleipnir import App, ConfigurationError
from sleipnir.schedule import Cron, Every, Scheduler
from sleipnir.testing import FakeClock

from .conftest import drain


def ts(*args: int, tz: str = "UTC") -> float:
    zone = UTC if tz == "UTC" else ZoneInfo(tz)
    return datetime(*args, tzinfo=zone).timestamp()  # type: ignore[misc]


def test_every_ticks_on_multiples_of_its_interval_since_the_epoch() -> None:
    every = Every(30.0)
    assert every.previous(1_000.0) == 990.0
    assert every.previous(990.0) == 990.0
    assert every.next(990.0) == 1_020.0
    assert Every(3600.0, offset=300.0).previous(ts(2026, 12, 2, 10, 4)) == ts(2026, 12, 2, 9, 5)


def test_cron_ticks_include_the_exact_tick_and_honour_the_time_zone() -> None:
    monthly = Cron("0 6 1 * *")
    first = ts(2026, 12, 1, 6, 0)
    assert monthly.previous(first) == first
    assert monthly.previous(first - 1) == ts(2026, 11, 1, 6, 0)
    assert monthly.next(first) == ts(2027, 1, 1, 6, 0)
    oslo = Cron("0 6 * * *", tz="Europe/Oslo")
    # 06:00 in Oslo is 05:00 UTC in winter and 04:00 UTC in summer
    assert oslo.next(ts(2026, 12, 2, 0, 0)) == ts(2026, 12, 2, 5, 0)
    assert oslo.next(ts(2026, 7, 2, 0, 0)) == ts(2026, 7, 2, 4, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"schedule": "not cron"},
        {"schedule": "0 6 * * *", "tz": "Mars/Olympus"},
        {"schedule": 0.0},
        {"schedule": float("nan")},
        {"tz": "UTC"},
        {"schedule": 10.0, "tz": "UTC"},
        {"schedule": 10.0, "catch_up": -1.0},
    ],
)
def test_bad_schedules_are_refused_at_registration(app: App, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        app.task(**kwargs)(lambda: None)  # type: ignore[call-overload]
    assert app.schedules == {}


def test_a_periodic_task_must_be_callable_without_arguments(app: App) -> None:
    with pytest.raises(ConfigurationError, match="without arguments"):

        @app.periodic(every=60.0)
        def needs_one(x: int) -> None: ...


def test_periodic_needs_exactly_one_of_every_and_cron(app: App) -> None:
    with pytest.raises(ConfigurationError):
        app.periodic()(lambda: None)
    with pytest.raises(ConfigurationError):
        app.periodic(every=1.0, cron="* * * * *")(lambda: None)


def test_each_tick_fires_once_however_many_schedulers_run(app: App, clock: FakeClock) -> None:
    ran: list[float] = []

    @app.periodic(every=60.0)
    def sweep() -> None:
        ran.append(clock.time())

    schedulers = [Scheduler(app, owner=f"s{i}") for i in range(4)]
    start = Every(60.0).previous(clock.time())
    for _ in range(5):
        fired = [job for s in schedulers for job in s.run_pending()]
        assert len(fired) == 1
        drain(app)
        clock.advance(60.0)
    assert len(ran) == 5
    assert ran[0] == clock.time() - 5 * 60.0
    assert [int(t - start) // 60 for t in ran] == [0, 1, 2, 3, 4]
    # The next tick fires once; asked again at once, nothing more fires.
    assert [job for s in schedulers for job in s.run_pending()] != []
    assert [job for s in schedulers for job in s.run_pending()] == []


def test_a_second_scheduler_takes_over_when_the_first_stops(app: App, clock: FakeClock) -> None:
    @app.periodic(every=60.0)
    def sweep() -> None: ...

    first, second = Scheduler(app, owner="first"), Scheduler(app, owner="second")
    assert len(first.run_pending()) == 1
    assert second.run_pending() == []
    clock.advance(60.0)  # "first" died: only "second" looks now
    assert len(second.run_pending()) == 1
    assert [s.queue for s in app.broker.stats() if s.ready] == ["default"]
    assert sum(s.ready for s in app.broker.stats()) == 2


def test_missed_ticks_run_once_on_catch_up_not_once_per_tick(app: App, clock: FakeClock) -> None:
    @app.periodic(every=60.0, catch_up=600.0)
    def sweep() -> None: ...

    scheduler = Scheduler(app)
    assert len(scheduler.run_pending()) == 1
    clock.advance(5 * 60.0)  # five ticks pass with nothing looking
    assert len(scheduler.run_pending()) == 1
    assert sum(s.ready for s in app.broker.stats()) == 2


def test_a_tick_older_than_the_catch_up_window_is_skipped(app: App) -> None:
    # A monthly report registered on the 15th does not run at once for the 1st.
    clock = FakeClock(start_at=ts(2026, 12, 15, 12, 0))
    app.clock = clock

    @app.task(schedule="0 6 1 * *")
    def monthly_report() -> None: ...

    scheduler = Scheduler(app, clock=clock)
    assert scheduler.run_pending() == []
    clock.advance(ts(2027, 1, 1, 6, 0) - clock.time() + 30.0)
    assert len(scheduler.run_pending()) == 1
    assert app.schedules["monthly_report"].catch_up == 3600.0


def test_seconds_to_next_points_at_the_nearest_tick(app: App, clock: FakeClock) -> None:
    @app.periodic(every=60.0)
    def a() -> None: ...

    @app.periodic(every=45.0)
    def b() -> None: ...

    scheduler = Scheduler(app)
    now = clock.time()
    assert scheduler.seconds_to_next() == pytest.approx(
        min(Every(60.0).next(now), Every(45.0).next(now)) - now
    )


def test_catch_up_zero_still_runs_a_tick_seen_within_the_grace(app: App, clock: FakeClock) -> None:
    @app.periodic(every=60.0, catch_up=0.0)
    def sweep() -> None: ...

    scheduler = Scheduler(app)
    now = clock.time()
    clock.advance(Every(60.0).next(now) - now + Scheduler.GRACE / 2)
    assert len(scheduler.run_pending()) == 1
    clock.advance(60.0 + Scheduler.GRACE * 2)  # the next tick, seen too late
    assert scheduler.run_pending() == []
