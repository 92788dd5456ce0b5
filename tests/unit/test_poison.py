"""Bad jobs harm no other job: every run gets an outcome, errors are bounded, and a job
whose lease ran out is charged nothing for it and runs apart until it finishes."""

from __future__ import annotations

import logging
import random

import pytest

from sleipnir import App, Worker
from sleipnir.bounded import ERROR_TEXT_LIMIT
from sleipnir.results import ResultRecord
from sleipnir.testing import FakeClock
from sleipnir.worker import MAX_CRASHES, MAX_LOST, apart_key

from .conftest import drain


class HostileStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")


class HostileBoth(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ refuses")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("exc_type", [HostileStr, HostileBoth])
def test_an_exception_that_cannot_be_printed_still_gives_its_job_an_outcome(
    app: App, exc_type: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(retries=1, backoff=0.0)
    def hostile() -> None:
        raise exc_type()

    @app.task
    def fine() -> str:
        return "ok"

    caplog.set_level(logging.INFO, logger="sleipnir.worker")
    handle = hostile.delay()
    others = [fine.delay() for _ in range(3)]
    worker = drain(app, concurrency=1)  # one slot: a wedged job would hold it for good
    assert handle.status() == "failed"
    record = handle.record()
    assert record is not None and record.error is not None
    assert record.error.startswith(f"{exc_type.__name__}: <its __str__ raised RuntimeError>")
    assert record.attempt == 2  # retried once by its policy, then failed
    assert [o.status() for o in others] == ["succeeded"] * 3
    assert worker.stats.failed == 1 and worker.stats.retried == 1
    assert worker.busy == 0 and worker.held == 0
    assert any(handle.id in r.getMessage() and "hostile" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(20)
def test_an_async_task_raising_an_unprintable_exception_gets_an_outcome(app: App) -> None:
    @app.task(retries=0)
    async def hostile() -> None:
        raise HostileBoth()

    handle = hostile.delay()
    drain(app)
    record = handle.record()
    assert record is not None and record.state == "failed"
    assert record.error is not None and "HostileBoth" in record.error


def test_huge_error_text_is_capped_in_the_record_the_dead_letter_and_the_log(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(retries=0)
    def loud() -> None:
        raise ValueError("E" * 20_000_000)

    caplog.set_level(logging.INFO, logger="sleipnir.worker")
    handle = loud.delay()
    drain(app)
    record = handle.record()
    assert record is not None and record.error is not None
    assert len(record.error) < ERROR_TEXT_LIMIT + 200
    assert record.error.startswith("ValueError: EEEE")
    assert "characters cut" in record.error
    assert "no retries left" in record.error  # the tail is kept
    (letter,) = app.broker.dead_letters()
    assert len(letter.reason) < ERROR_TEXT_LIMIT + 200
    assert max(len(r.getMessage()) for r in caplog.records) < ERROR_TEXT_LIMIT + 500


# -- leases that ran out ------------------------------------------------------------


def _expire(app: App, clock: FakeClock, limit: int) -> list[str]:
    """Reserve up to ``limit`` jobs as a worker that then dies; let their leases run out."""
    held = app.broker.reserve(["default"], limit, lease=1.0)
    clock.advance(1.1)
    return [r.id for r in held]


def test_jobs_held_beside_a_crash_are_not_charged_a_try(app: App, clock: FakeClock) -> None:
    runs: list[int] = []

    @app.task(retries=0)
    def work(n: int) -> int:
        runs.append(n)
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        return n

    handles = [work.delay(n) for n in range(3)]
    assert len(_expire(app, clock, 3)) == 3  # a worker held all three and died
    drain(app)
    # retries=0: a charged lost lease would have left no try for the failure below;
    # the first job to run fails and is dead with "attempt 1 of 1", the others succeed.
    records = [h.record() for h in handles]
    assert all(r is not None for r in records)
    failed = [r for r in records if r is not None and r.state == "failed"]
    assert len(failed) == 1
    assert failed[0].error is not None and "(attempt 1 of 1, no retries left)" in failed[0].error
    assert sorted(r.attempt for r in records if r is not None) == [2, 2, 2]  # deliveries


def test_a_job_back_from_a_lost_lease_runs_alone(app: App, clock: FakeClock) -> None:
    """Without the app's module a suspect runs alone: nothing else runs or is held meanwhile."""
    beside: list[tuple[str, int, int]] = []
    worker_box: list[Worker] = []

    @app.task
    def work(name: str) -> str:
        w = worker_box[0]
        beside.append((name, w.busy, w.held))
        return name

    suspect = work.delay("suspect")
    _expire(app, clock, 1)
    plain = [work.delay(f"plain-{i}") for i in range(5)]
    worker = Worker(app, burst=True, concurrency=4, rng=random.Random(0))
    worker_box.append(worker)
    assert worker.run() == 0
    assert suspect.status() == "succeeded"
    assert all(p.status() == "succeeded" for p in plain)
    (seen,) = [b for b in beside if b[0] == "suspect"]
    assert seen == ("suspect", 1, 1)  # it alone was running, and nothing else was held
    assert len(beside) == 6
    for p in plain:  # held beside it, given back uncharged: still their first delivery
        record = p.record()
        assert record is not None and record.attempt == 1
        assert app.broker.job_info(p.id) is None


def test_a_job_whose_lease_keeps_running_out_goes_to_the_dead_letters(
    app: App, clock: FakeClock
) -> None:
    runs: list[int] = []

    @app.task(retries=5)
    def crashes() -> None:
        runs.append(1)

    handle = crashes.delay()
    for _ in range(MAX_LOST):
        _expire(app, clock, 1)
    other = crashes.delay()
    drain(app)
    assert runs == [1]  # only the other job ran
    assert handle.status() == "failed"
    assert other.status() == "succeeded"
    (letter,) = app.broker.dead_letters()
    assert letter.id == handle.id
    assert f"Crashed: its lease ran out {MAX_LOST} times" in letter.reason


def test_an_error_text_no_store_can_write_is_stored_escaped(app: App) -> None:
    @app.task(retries=0)
    def surrogate() -> None:
        raise ValueError("bad \ud800 text")

    handle = surrogate.delay()
    drain(app)
    record = handle.record()
    assert record is not None and record.state == "failed"
    assert record.error is not None and "bad \\ud800 text" in record.error


def test_an_outcome_the_store_refuses_fails_its_job_alone(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task
    def echo(word: str) -> str:
        return word

    put = app.results.put

    def picky_put(records: list[ResultRecord]) -> None:
        if any(r.value == b'"poison"' for r in records):
            raise TypeError("the store cannot take this record")
        put(records)

    monkeypatch.setattr(app.results, "put", picky_put)
    bad = echo.delay("poison")
    good = [echo.delay(f"fine-{i}") for i in range(3)]
    worker = drain(app, concurrency=4)
    record = bad.record()
    assert record is not None and record.state == "failed"
    assert record.error is not None and "could not be stored (TypeError)" in record.error
    assert [g.result(timeout=1.0) for g in good] == ["fine-0", "fine-1", "fine-2"]
    assert worker.stats.failed == 1 and worker.stats.succeeded == 3
    assert app.broker.dead_letters()[0].id == bad.id


def test_a_run_apart_is_counted_while_it_runs_and_forgotten_once_it_ends(
    app: App, clock: FakeClock
) -> None:
    seen: list[bytes | None] = []
    ids: list[str] = []

    @app.task
    def work() -> None:
        seen.extend(app.results.get_keys([apart_key(ids[0])]))

    handle = work.delay()
    ids.append(handle.id)
    _expire(app, clock, 1)
    drain(app)
    assert handle.status() == "succeeded"
    assert seen == [b"1/0"]  # had its worker died now, the next delivery would know
    assert app.results.get_keys([apart_key(handle.id)]) == [None]


def test_a_job_whose_runs_apart_keep_killing_their_worker_is_dead(
    app: App, clock: FakeClock
) -> None:
    runs: list[int] = []

    @app.task(retries=5)
    def crashes() -> None:
        runs.append(1)

    handle = crashes.delay()
    _expire(app, clock, 1)
    # What a worker that started it apart MAX_CRASHES times, and died each time, left.
    app.results.set_key(apart_key(handle.id), str(MAX_CRASHES).encode(), clock.time() + 60)
    drain(app)
    assert runs == []
    (letter,) = app.broker.dead_letters()
    assert f"its worker died {MAX_CRASHES} times while the job ran apart" in letter.reason
