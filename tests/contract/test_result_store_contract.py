"""The result-store contract (see ``sleipnir.results``), checked on every backend."""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from dataclasses import astuple, replace
from pathlib import Path
from typing import Any

import pytest

from sleipnir.job import new_job_id
from sleipnir.results import JobState, ResultRecord, ResultStore, WorkerBeat
from sleipnir.testing import FakeClock

from .conftest import Backend

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


# -- stored keys ----------------------------------------------------------------------


def test_set_key_stores_a_value_and_replaces_it(results: ResultStore, clock: FakeClock) -> None:
    key = f"progress:{new_job_id()}"
    expires_at = clock.time() + 60
    results.set_key(key, b"\x00first\xff", expires_at)
    assert results.get_keys([key]) == [b"\x00first\xff"]
    results.set_key(key, b"second", expires_at)
    assert results.get_keys([key]) == [b"second"]


def test_set_key_replaces_a_claim_and_claims_see_it(results: ResultStore, clock: FakeClock) -> None:
    key = f"cancel:{new_job_id()}"
    expires_at = clock.time() + 60
    assert results.claim_key(key, b"job-1", expires_at) is None
    results.set_key(key, b"set", expires_at)
    assert results.get_keys([key]) == [b"set"]
    assert results.claim_key(key, b"job-2", expires_at) == b"set"
    assert results.release_key(key) is True
    assert results.get_keys([key]) == [None]


def test_get_keys_keeps_the_order_and_gives_none_for_missing_keys(
    results: ResultStore, clock: FakeClock
) -> None:
    first, second, never = (f"progress:{new_job_id()}" for _ in range(3))
    results.set_key(first, b"1", clock.time() + 60)
    results.set_key(second, b"2", clock.time() + 60)
    assert results.get_keys([second, never, first, second]) == [b"2", None, b"1", b"2"]
    assert results.get_keys([never]) == [None]
    assert results.get_keys([]) == []


@pytest.mark.requires("fake_clock")
def test_a_set_key_past_its_expiry_reads_as_none_until_set_again(
    results: ResultStore, clock: FakeClock
) -> None:
    short, long = f"progress:{new_job_id()}", f"progress:{new_job_id()}"
    results.set_key(short, b"short", clock.time() + 10)
    results.set_key(long, b"long", clock.time() + 100)
    clock.advance(9)
    assert results.get_keys([short, long]) == [b"short", b"long"]
    clock.advance(1)  # expires_at itself is past
    assert results.get_keys([short, long]) == [None, b"long"]
    results.set_key(short, b"again", clock.time() + 10)
    assert results.get_keys([short, long]) == [b"again", b"long"]


class RewindableClock(FakeClock):
    """A fake clock that can also be set back, to see what a purge left behind."""

    def __init__(self, start_at: float) -> None:
        super().__init__(start_at)
        self._back = 0.0

    def rewind(self, seconds: float) -> None:
        self._back += seconds

    def time(self) -> float:
        return super().time() - self._back


@pytest.mark.requires("fake_clock")
def test_purge_expired_deletes_expired_keys(backend: Backend, tmp_path: Path) -> None:
    if backend.make_results is None:
        pytest.skip(f"backend {backend.name!r} keeps no results")
    # Far enough behind the real time that a backend which also expires keys by its own
    # clock (Redis) has expired the short ones too, and not the long one.
    clock = RewindableClock(start_at=math.floor(time.time()) - 1000.5)
    results = backend.make_results(clock, tmp_path)
    try:
        short = [f"progress:{new_job_id()}" for _ in range(2)]
        long = f"progress:{new_job_id()}"
        results.set_key(short[0], b"set", clock.time() + 10)
        assert results.claim_key(short[1], b"claimed", clock.time() + 10) is None
        results.set_key(long, b"long", clock.time() + 5000)
        clock.advance(11)
        results.purge_expired()
        assert results.get_keys([*short, long]) == [None, None, b"long"]
        clock.rewind(11)  # what is still stored would read as live again
        assert results.get_keys([*short, long]) == [None, None, b"long"]
    finally:
        results.close()


# -- slots ----------------------------------------------------------------------------


def test_acquire_slot_up_to_the_limit_then_the_earliest_expiry(
    results: ResultStore, clock: FakeClock
) -> None:
    name, now = f"limit:{new_job_id()}", clock.time()
    assert results.acquire_slot(name, "job-a", 2, now + 30) is None
    assert results.acquire_slot(name, "job-b", 2, now + 20) is None
    assert results.acquire_slot(name, "job-c", 2, now + 40) == now + 20
    assert results.acquire_slot(name, "job-d", 2, now + 40) == now + 20
    assert results.acquire_slot(name, "job-c", 3, now + 40) is None  # a higher limit


def test_the_holder_of_a_slot_renews_it_even_when_all_are_taken(
    results: ResultStore, clock: FakeClock
) -> None:
    name, now = f"limit:{new_job_id()}", clock.time()
    assert results.acquire_slot(name, "job-a", 2, now + 10) is None
    assert results.acquire_slot(name, "job-b", 2, now + 20) is None
    assert results.acquire_slot(name, "job-c", 2, now + 60) == now + 10
    assert results.acquire_slot(name, "job-a", 2, now + 30) is None
    assert results.acquire_slot(name, "job-c", 2, now + 60) == now + 20  # a's end moved
    assert results.acquire_slot(name, "job-b", 1, now + 25) is None  # over a lower limit too
    assert results.acquire_slot(name, "job-c", 2, now + 60) == now + 25


@pytest.mark.requires("fake_clock")
def test_a_slot_past_its_expiry_is_free(results: ResultStore, clock: FakeClock) -> None:
    name, start = f"limit:{new_job_id()}", clock.time()
    assert results.acquire_slot(name, "job-a", 1, start + 10) is None
    clock.advance(9)
    assert results.acquire_slot(name, "job-b", 1, clock.time() + 10) == start + 10
    clock.advance(1)  # expires_at itself is past
    assert results.acquire_slot(name, "job-b", 1, clock.time() + 10) is None
    assert results.acquire_slot(name, "job-a", 1, clock.time() + 10) == start + 20
    assert results.release_slot(name, "job-a") is False


def test_release_slot_frees_it_and_is_false_when_none_is_held(
    results: ResultStore, clock: FakeClock
) -> None:
    name, expires_at = f"limit:{new_job_id()}", clock.time() + 60
    assert results.acquire_slot(name, "job-a", 1, expires_at) is None
    assert results.acquire_slot(name, "job-b", 1, expires_at) == expires_at
    assert results.release_slot(name, "job-b") is False
    assert results.release_slot(name, "job-a") is True
    assert results.release_slot(name, "job-a") is False
    assert results.acquire_slot(name, "job-b", 1, expires_at) is None
    assert results.release_slot(f"limit:{new_job_id()}", "job-b") is False


def test_slots_of_different_names_are_independent(results: ResultStore, clock: FakeClock) -> None:
    first, second = f"limit:{new_job_id()}", f"limit:{new_job_id()}"
    now = clock.time()
    assert results.acquire_slot(first, "job-a", 1, now + 10) is None
    assert results.acquire_slot(second, "job-b", 1, now + 20) is None
    assert results.acquire_slot(second, "job-a", 1, now + 10) == now + 20
    assert results.release_slot(second, "job-a") is False
    assert results.acquire_slot(first, "job-b", 1, now + 20) == now + 10
    assert results.release_slot(first, "job-a") is True
    assert results.acquire_slot(second, "job-c", 1, now + 20) == now + 20


def test_acquire_slot_needs_a_limit_of_at_least_one(results: ResultStore, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        results.acquire_slot(f"limit:{new_job_id()}", "job-a", 0, clock.time() + 60)


def test_the_limit_holds_among_concurrent_acquirers(results: ResultStore, clock: FakeClock) -> None:
    name, expires_at = f"limit:{new_job_id()}", clock.time() + 60
    start = threading.Barrier(16)

    def acquire(i: int) -> float | None:
        start.wait(timeout=30)
        return results.acquire_slot(name, f"job-{i}", 3, expires_at)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(acquire, range(16)))
    winners = [i for i, a in enumerate(answers) if a is None]
    assert len(winners) == 3
    assert [a for a in answers if a is not None] == [expires_at] * 13
    assert results.acquire_slot(name, "job-16", 3, expires_at) == expires_at
    assert results.release_slot(name, f"job-{winners[0]}") is True
    assert results.acquire_slot(name, "job-16", 3, expires_at) is None
