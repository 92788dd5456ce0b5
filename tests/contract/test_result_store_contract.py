"""The result-store contract (see ``sleipnir.results``), checked on every backend."""

from __future__ import annotations

from dataclasses import astuple, replace
from typing import Any

import pytest

from sleipnir.job import new_job_id
from sleipnir.results import JobState, ResultRecord, ResultStore
from sleipnir.testing import FakeClock

TTL = 3600.0


def make_record(clock: FakeClock, **changes: Any) -> ResultRecord:
    """A succeeded job's record, every field set, expiring in ``TTL``; ``changes`` override."""
    now = clock.time()
    record = ResultRecord(
        job_id=new_job_id(),
        state=JobState.SUCCEEDED,
        task="tasks.add",
        queue="default",
        attempt=1,
        finished_at=now,
        expires_at=now + TTL,
        value=b'{"sum": 3}',
        error=None,
        started_at=now - 1.5,
    )
    return replace(record, **changes)


def assert_same(got: ResultRecord | None, want: ResultRecord) -> None:
    """Equal field by field, and of the same types (``"failed"`` is not ``JobState.FAILED``)."""
    assert got == want
    assert [type(v) for v in astuple(got)] == [type(v) for v in astuple(want)]


def test_put_then_get_returns_every_field(results: ResultStore, clock: FakeClock) -> None:
    records = [
        make_record(clock),
        make_record(clock, state=JobState.FAILED, attempt=3, value=None, error="ValueError: x"),
        make_record(clock, state=JobState.RETRYING, error="timeout", value=None, started_at=None),
    ]
    results.put(records)
    for record in records:
        assert_same(results.get(record.job_id), record)


def test_get_of_an_unknown_id_is_none(results: ResultStore) -> None:
    assert results.get(new_job_id()) is None


def test_put_replaces_an_existing_record(results: ResultStore, clock: FakeClock) -> None:
    retrying = make_record(clock, state=JobState.RETRYING, value=None, error="timeout")
    results.put([retrying])
    succeeded = replace(retrying, state=JobState.SUCCEEDED, attempt=2, value=b"1", error=None)
    results.put([succeeded])
    assert_same(results.get(retrying.job_id), succeeded)


def test_put_of_an_earlier_attempt_does_not_overwrite_a_later_one(
    results: ResultStore, clock: FakeClock
) -> None:
    # A worker that lost its lease may settle after the delivery that replaced it.
    newer = make_record(clock, state=JobState.SUCCEEDED, attempt=2, value=b"2", error=None)
    results.put([newer])
    results.put([replace(newer, state=JobState.FAILED, attempt=1, value=None, error="stale")])
    assert_same(results.get(newer.job_id), newer)


@pytest.mark.requires("fake_clock")
def test_record_past_expires_at_is_gone(results: ResultStore, clock: FakeClock) -> None:
    record = make_record(clock, expires_at=clock.time() + 10)
    results.put([record])
    clock.advance(9)
    assert results.get(record.job_id) == record
    clock.advance(2)
    assert results.get(record.job_id) is None


@pytest.mark.requires("fake_clock")
def test_purge_expired_deletes_expired_records_and_counts_them(
    results: ResultStore, clock: FakeClock
) -> None:
    short = [make_record(clock, expires_at=clock.time() + 10) for _ in range(2)]
    long = make_record(clock, expires_at=clock.time() + 100)
    results.put([*short, long])
    clock.advance(11)
    assert results.purge_expired() == 2
    assert results.delete([r.job_id for r in short]) == 0  # already gone
    assert results.get(long.job_id) == long


def test_delete_returns_how_many_records_there_were(results: ResultStore, clock: FakeClock) -> None:
    first, second = make_record(clock), make_record(clock)
    results.put([first, second])
    assert results.delete([first.job_id, second.job_id, new_job_id()]) == 2
    assert results.get(first.job_id) is None
    assert results.delete([first.job_id]) == 0
