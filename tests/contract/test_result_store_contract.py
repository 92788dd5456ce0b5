"""The result-store contract (see ``sleipnir.results``), checked on every backend."""

from __future__ import annotations

import concurrent.futures
from dataclasses import astuple, replace
from typing import Any

import pytest

from sleipnir.job import new_job_id
from sleipnir.results import JobState, ResultRecord, ResultStore, WorkerBeat
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


# -- heartbeats ---------------------------------------------------------------------


def make_beat(clock: FakeClock, worker_id: str, ttl: float = 15.0, n: int = 0) -> WorkerBeat:
    now = clock.time()
    return WorkerBeat(
        worker_id=worker_id,
        at=now,
        expires_at=now + ttl,
        body=b'{"worker_id": "%s", "n": %d}' % (worker_id.encode(), n),
        sample=b'[%r, %d, "\\u00e9\\u0000"]' % (now, n),
    )


def test_beat_keeps_the_latest_per_worker(results: ResultStore, clock: FakeClock) -> None:
    first = make_beat(clock, "host-a:1:aa", n=1)
    other = make_beat(clock, "host-b:2:bb", n=1)
    results.beat(first, keep=3600)
    results.beat(other, keep=3600)
    clock.advance(5)
    second = make_beat(clock, "host-a:1:aa", n=2)
    results.beat(second, keep=3600)
    assert results.beats() == [second, other]


@pytest.mark.requires("fake_clock")
def test_a_beat_past_its_expiry_is_left_out(results: ResultStore, clock: FakeClock) -> None:
    short = make_beat(clock, "host-a:1:aa", ttl=10)
    long = make_beat(clock, "host-b:2:bb", ttl=100)
    results.beat(short, keep=3600)
    results.beat(long, keep=3600)
    clock.advance(11)
    assert [b.worker_id for b in results.beats()] == ["host-b:2:bb"]


def test_beat_history_keeps_samples_oldest_first_and_drops_old_ones(
    results: ResultStore, clock: FakeClock
) -> None:
    start = clock.time()
    sent = []
    for n in range(6):
        beat = make_beat(clock, f"host-{n % 2}:1:aa", n=n)
        results.beat(beat, keep=25)
        sent.append(beat)
        clock.advance(10)
    history = results.beat_history(start)
    # The last beat was at start + 50; with keep=25 the samples from start + 25 on stay.
    assert [(h.worker_id, h.at, h.sample) for h in history] == [
        (b.worker_id, b.at, b.sample) for b in sent[3:]
    ]
    assert [h.at for h in results.beat_history(start + 40)] == [start + 40, start + 50]


# -- claimed keys --------------------------------------------------------------------


def test_claim_key_is_set_if_absent(results: ResultStore, clock: FakeClock) -> None:
    key = f"idempotency:{new_job_id()}"
    expires_at = clock.time() + 60
    assert results.claim_key(key, b"job-1", expires_at) is None
    assert results.claim_key(key, b"job-2", expires_at) == b"job-1"
    assert results.release_key(key) is True
    assert results.release_key(key) is False
    assert results.claim_key(key, b"job-3", expires_at) is None
    assert results.claim_key(key, b"job-4", expires_at) == b"job-3"


@pytest.mark.requires("fake_clock")
def test_an_expired_claim_counts_as_absent(results: ResultStore, clock: FakeClock) -> None:
    key = f"idempotency:{new_job_id()}"
    assert results.claim_key(key, b"job-1", clock.time() + 10) is None
    clock.advance(9)
    assert results.claim_key(key, b"job-2", clock.time() + 10) == b"job-1"
    clock.advance(2)
    assert results.claim_key(key, b"job-2", clock.time() + 10) is None
    assert results.claim_key(key, b"job-3", clock.time() + 10) == b"job-2"


def test_one_claim_wins_among_concurrent_claimers(results: ResultStore, clock: FakeClock) -> None:
    key = f"idempotency:{new_job_id()}"
    expires_at = clock.time() + 60
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda i: results.claim_key(key, b"job-%d" % i, expires_at), range(16))
        )
    winners = [i for i, a in enumerate(answers) if a is None]
    assert len(winners) == 1
    assert set(answers) == {None, b"job-%d" % winners[0]}
