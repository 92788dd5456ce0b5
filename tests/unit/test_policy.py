"""The worker's policy on its own: no thread, no broker, no store (sleipnir.worker.policy)."""

from __future__ import annotations

import random

import pytest

from sleipnir import App, Fail, Retry
from sleipnir.brokers.base import Reservation
from sleipnir.job import Job, encode_job, new_job_id
from sleipnir.results import JobState
from sleipnir.worker import MAX_LOST
from sleipnir.worker.held import JobRun
from sleipnir.worker.policy import admit, backoff_delay, failure, success

NOW = 1_000.0


def reservation(body: bytes, attempt: int = 1, lost: int = 0) -> Reservation:
    return Reservation(
        id=new_job_id(),
        queue="default",
        body=body,
        attempt=attempt,
        priority=0,
        lease_until=NOW + 30,
        lost=lost,
        token="t",
    )


@pytest.fixture
def app() -> App:
    app = App("memory://")

    @app.task(retries=2, backoff=1.0, max_backoff=10.0)
    def add(a: int, b: int) -> int:
        return a + b

    return app


def body(task: str, args: list[object]) -> bytes:
    return encode_job(Job(id=new_job_id(), task=task, args=args, enqueued_at=NOW))


def held(app: App, attempt: int = 1, lost: int = 0) -> JobRun:
    run = admit(reservation(body("add", [1, 2]), attempt, lost), NOW + 30, app.get_task, NOW)
    assert isinstance(run, JobRun)
    return run


def test_admit_holds_a_good_job_and_refuses_bad_ones_with_their_reason(app: App) -> None:
    run = held(app)
    assert (run.task, run.args, run.attempt, run.deadline) == ("add", [1, 2], 1, NOW + 30)
    for raw, reason in (
        (b"not json", "undecodable"),
        (body("nope", []), "unknown task 'nope'"),
        (body("add", [1]), "arguments do not fit"),
    ):
        out = admit(reservation(raw), NOW + 30, app.get_task, NOW)
        assert not isinstance(out, JobRun)
        assert out.state is JobState.FAILED and out.error is not None
        assert reason in out.error


def test_admit_sends_a_job_lost_too_often_to_the_dead_letters(app: App) -> None:
    out = admit(reservation(body("add", [1, 2]), MAX_LOST + 1, MAX_LOST), NOW, app.get_task, NOW)
    assert not isinstance(out, JobRun) and out.error is not None
    assert out.error.startswith("Crashed: its lease ran out 10 times")
    assert isinstance(held(app, attempt=3, lost=1), JobRun) and held(app, 3, 1).apart


def test_success_encodes_the_value_or_fails_the_job(app: App) -> None:
    assert success(held(app), {"x": 1}, NOW).value == b'{"x":1}'
    bad = success(held(app), object(), NOW)
    assert bad.state is JobState.FAILED and bad.value is None


def test_failure_retries_with_backoff_until_the_tries_are_used_up(app: App) -> None:
    rng = random.Random(0)
    first = failure(held(app, attempt=1), ValueError("no"), NOW, rng)
    assert first.state is JobState.RETRYING and first.retry_at is not None
    assert NOW + 0.5 <= first.retry_at <= NOW + 1.0  # base 1.0: drawn from [b/2, b]
    assert isinstance(first.exception, ValueError)
    last = failure(held(app, attempt=3), ValueError("no"), NOW, rng)
    assert last.state is JobState.FAILED and last.error is not None
    assert "(attempt 3 of 3, no retries left)" in last.error
    # a delivery that ended with a lost lease is not charged: attempt 3 with 1 lost is try 2
    assert failure(held(app, attempt=3, lost=1), ValueError("no"), NOW, rng).state == "retrying"


def test_fail_and_retry_after_are_obeyed(app: App) -> None:
    rng = random.Random(0)
    dead = failure(held(app), Fail("bad input"), NOW, rng)
    assert (dead.state, dead.error) == (JobState.FAILED, "Fail: bad input")
    later = failure(held(app), Retry(after=42.0), NOW, rng)
    assert later.retry_at == NOW + 42.0


def test_failure_of_an_exception_that_cannot_be_printed_still_gives_an_outcome(app: App) -> None:
    class Hostile(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    out = failure(held(app), Hostile(), NOW, random.Random(0))
    assert out.state is JobState.RETRYING and out.error is not None
    assert out.error.startswith("Hostile: <its __str__ raised RuntimeError>")


def test_backoff_doubles_up_to_its_cap() -> None:
    rng = random.Random(1)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0)):
        delay = backoff_delay(attempt, 1.0, 10.0, rng)
        assert ceiling / 2 <= delay <= ceiling
