"""The broker contract (see ``sleipnir.brokers.base``), checked on every backend.

Time only moves by ``clock.advance``; tests that need the backend to follow it
are marked ``requires("fake_clock")``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sleipnir.brokers.base import (
    Broker,
    BrokerJobState,
    Envelope,
    JobInfo,
    Nack,
    QueueStats,
    Reservation,
)
from sleipnir.job import Job, encode_job, new_job_id
from sleipnir.testing import FakeClock

LEASE = 30.0

requires_fake_clock = pytest.mark.requires("fake_clock")

Enqueue = Callable[..., list[Envelope]]


def make_envelope(
    clock: FakeClock, queue: str, *, priority: int = 0, eta_at: float | None = None
) -> Envelope:
    """An envelope around a real encoded job."""
    job = Job(
        id=new_job_id(),
        task="t",
        args=[new_job_id()],
        queue=queue,
        priority=priority,
        enqueued_at=clock.time(),
        eta_at=eta_at,
    )
    return Envelope(job.id, queue, encode_job(job), priority=priority, eta_at=eta_at)


@pytest.fixture
def enqueue(broker: Broker, clock: FakeClock, queue: str) -> Enqueue:
    """Enqueue ``n`` jobs in one call (to ``queue`` unless told) and return their envelopes."""

    def enqueue(
        n: int = 1, *, queue: str = queue, priority: int = 0, eta_at: float | None = None
    ) -> list[Envelope]:
        envelopes = [
            make_envelope(clock, queue, priority=priority, eta_at=eta_at) for _ in range(n)
        ]
        broker.enqueue(envelopes)
        return envelopes

    return enqueue


def ids(items: Iterable[Any]) -> list[str]:
    return [item.id for item in items]


def reserve_all(broker: Broker, queue: str, lease: float = LEASE) -> list[Reservation]:
    return broker.reserve([queue], limit=100, lease=lease)


def reserve_one(broker: Broker, queue: str, lease: float = LEASE) -> Reservation:
    reserved = reserve_all(broker, queue, lease)
    assert len(reserved) == 1, reserved
    return reserved[0]


def fail_for_good(broker: Broker, queue: str, reason: str = "boom") -> list[Reservation]:
    """Reserve every ready job of ``queue`` and send it to the dead letters."""
    reserved = reserve_all(broker, queue)
    assert broker.nack([Nack(res, None, reason) for res in reserved]) == [True] * len(reserved)
    return reserved


def stats_of(broker: Broker, queue: str) -> QueueStats:
    [stats] = [s for s in broker.stats() if s.queue == queue]
    return stats


def counts(stats: QueueStats) -> tuple[int, int, int, int]:
    return stats.ready, stats.scheduled, stats.running, stats.dead


# -- enqueue and reserve ------------------------------------------------------


def test_enqueue_then_reserve_returns_the_job_at_attempt_1(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    [env] = enqueue()
    res = reserve_one(broker, queue)
    assert (res.id, res.queue, res.body, res.attempt) == (env.id, queue, env.body, 1)


def test_bulk_enqueue_then_reserve_returns_every_job_at_attempt_1(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    envelopes = enqueue(5)
    reserved = reserve_all(broker, queue)
    assert sorted((r.id, r.body, r.attempt) for r in reserved) == sorted(
        (e.id, e.body, 1) for e in envelopes
    )


@pytest.mark.parametrize("state", ["ready", "reserved"])
def test_enqueue_of_an_id_the_broker_holds_leaves_that_job_as_it_is(
    broker: Broker, enqueue: Enqueue, clock: FakeClock, queue: str, state: str
) -> None:
    if not broker.finds_queued_jobs:
        pytest.skip(f"{type(broker).__name__} cannot find queued jobs by id")
    [env] = enqueue()
    other = make_envelope(clock, queue)  # the same id, another body, a second job beside
    again = Envelope(env.id, queue, other.body, priority=5)
    held: Reservation | None = None
    if state != "ready":
        held = reserve_one(broker, queue)
    broker.enqueue([again, other])
    info = broker.job_info(env.id)
    assert info is not None and info.state.value == state
    reserved = reserve_all(broker, queue)
    if state == "ready":  # stored once, as it was, in its place; the other beside it
        assert [(r.id, r.body, r.attempt) for r in reserved] == [
            (env.id, env.body, 1),
            (other.id, other.body, 1),
        ]
    else:
        assert ids(reserved) == [other.id]
    if state == "reserved":
        assert held is not None and broker.ack([held]) == [True]  # its token still holds


def test_enqueue_async_stores_the_jobs(broker: Broker, clock: FakeClock, queue: str) -> None:
    envelopes = [make_envelope(clock, queue) for _ in range(2)]
    asyncio.run(broker.enqueue_async(envelopes))
    assert ids(reserve_all(broker, queue)) == ids(envelopes)


@requires_fake_clock
def test_lease_ends_lease_seconds_after_reserve(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    enqueue()
    assert reserve_one(broker, queue, lease=LEASE).lease_until == clock.time() + LEASE


def test_reserve_respects_limit(broker: Broker, enqueue: Enqueue, queue: str) -> None:
    enqueue(5)
    assert len(broker.reserve([queue], limit=2, lease=LEASE)) == 2
    assert len(broker.reserve([queue], limit=10, lease=LEASE)) == 3


def test_higher_priority_first_and_fifo_within_a_priority(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    low_1 = enqueue(priority=0)
    high = enqueue(2, priority=5)
    low_2 = enqueue(priority=0)
    middle = enqueue(priority=1)
    reserved = reserve_all(broker, queue)
    assert ids(reserved) == ids(high + middle + low_1 + low_2)
    assert [r.priority for r in reserved] == [5, 5, 1, 0, 0]


def test_queues_are_served_in_the_order_given(
    broker: Broker, enqueue: Enqueue, new_queue: Callable[[], str]
) -> None:
    first, second = new_queue(), new_queue()
    in_first = enqueue(2, queue=first)
    in_second = enqueue(2, queue=second)
    reserved = broker.reserve([second, first], limit=3, lease=LEASE)
    assert ids(reserved) == ids(in_second + in_first[:1])


def test_reserve_from_an_unknown_or_empty_queue_returns_nothing(
    broker: Broker, enqueue: Enqueue, queue: str, new_queue: Callable[[], str]
) -> None:
    assert broker.reserve([new_queue()], limit=10, lease=LEASE) == []
    enqueue()
    assert broker.ack([reserve_one(broker, queue)]) == [True]
    assert reserve_all(broker, queue) == []


def test_reserved_job_is_not_handed_out_again_while_its_lease_lives(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    enqueue()
    reserve_one(broker, queue)
    assert reserve_all(broker, queue) == []
    clock.advance(LEASE - 1)
    assert reserve_all(broker, queue) == []


# -- leases ---------------------------------------------------------------------


@requires_fake_clock
def test_expired_lease_makes_the_job_reservable_at_the_next_attempt(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue()
    reserve_one(broker, queue)
    clock.advance(LEASE + 1)
    again = reserve_one(broker, queue)
    assert (again.id, again.body, again.attempt) == (env.id, env.body, 2)


OPERATIONS: dict[str, Callable[[Broker, Reservation, float], list[bool]]] = {
    "renew": lambda broker, res, now: broker.renew([res], LEASE),
    "ack": lambda broker, res, now: broker.ack([res]),
    "nack-retry": lambda broker, res, now: broker.nack([Nack(res, now + 60, "late")]),
    "nack-dead": lambda broker, res, now: broker.nack([Nack(res, None, "late")]),
    "release": lambda broker, res, now: broker.release([res]),
    "release-later": lambda broker, res, now: broker.release([res], now + 60),
}
each_operation = pytest.mark.parametrize("operation", list(OPERATIONS))


@requires_fake_clock
@each_operation
def test_expired_reservation_changes_nothing(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock, operation: str
) -> None:
    enqueue()
    old = reserve_one(broker, queue)
    clock.advance(LEASE + 1)
    assert OPERATIONS[operation](broker, old, clock.time()) == [False]
    assert reserve_one(broker, queue).attempt == 2


@requires_fake_clock
@each_operation
def test_stale_reservation_does_not_touch_the_new_owners(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock, operation: str
) -> None:
    enqueue()
    old = reserve_one(broker, queue)
    clock.advance(LEASE + 1)
    new = reserve_one(broker, queue)
    assert OPERATIONS[operation](broker, old, clock.time()) == [False]
    assert broker.job_info(new.id) == JobInfo(new.id, queue, BrokerJobState.RESERVED, 2)
    assert reserve_all(broker, queue) == []
    assert broker.ack([new]) == [True]


@requires_fake_clock
def test_renew_extends_the_lease_past_its_original_end(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    enqueue()
    res = reserve_one(broker, queue)
    clock.advance(LEASE - 10)
    assert broker.renew([res], LEASE) == [True]
    clock.advance(20)  # 10 seconds past the original end, 20 before the new one
    assert reserve_all(broker, queue) == []
    assert broker.ack([res]) == [True]


# -- lost leases ------------------------------------------------------------------
#
# ``run_out_leases(broker, LEASE)`` does what a worker's death does to the leases it
# holds, each backend its own way (the fake clock moves past them, or the consumer's
# connection drops); see ``Backend.run_out_leases``.

RunOutLeases = Callable[[Broker, float], None]


def reserve_after_loss(broker: Broker, queue: str) -> Reservation:
    """Reserve the one job a lost lease gave back.

    A server that notices the loss itself (a dropped connection) may hand the job
    back a moment later; a fake-clock backend has it ready at once.
    """
    deadline = time.monotonic() + 10
    while not (reserved := reserve_all(broker, queue)):
        assert time.monotonic() < deadline, "the job of the lost lease never came back"
        broker.wait([queue], 0.05)
    assert len(reserved) == 1, reserved
    return reserved[0]


def test_a_first_delivery_has_lost_0(broker: Broker, enqueue: Enqueue, queue: str) -> None:
    enqueue()
    assert reserve_one(broker, queue).lost == 0


def test_a_lease_that_ran_out_is_counted_in_attempt_and_in_lost(
    broker: Broker, enqueue: Enqueue, queue: str, run_out_leases: RunOutLeases
) -> None:
    [env] = enqueue()
    assert reserve_one(broker, queue).lost == 0
    run_out_leases(broker, LEASE)
    again = reserve_after_loss(broker, queue)
    assert (again.id, again.body, again.attempt, again.lost) == (env.id, env.body, 2, 1)


def test_two_leases_that_ran_out_count_two_lost(
    broker: Broker, enqueue: Enqueue, queue: str, run_out_leases: RunOutLeases
) -> None:
    [env] = enqueue()
    reserve_one(broker, queue)
    run_out_leases(broker, LEASE)
    reserve_after_loss(broker, queue)
    run_out_leases(broker, LEASE)
    again = reserve_after_loss(broker, queue)
    assert (again.id, again.attempt, again.lost) == (env.id, 3, 2)


def test_only_the_lost_one_of_two_jobs_counts_a_lost_lease(
    broker: Broker, enqueue: Enqueue, queue: str, run_out_leases: RunOutLeases
) -> None:
    first, second = enqueue(2)
    held = reserve_all(broker, queue)
    assert broker.ack([r for r in held if r.id == first.id]) == [True]
    run_out_leases(broker, LEASE)
    again = reserve_after_loss(broker, queue)
    assert (again.id, again.attempt, again.lost) == (second.id, 2, 1)


@pytest.mark.parametrize("lost", [0, 1])
def test_a_retry_keeps_lost(
    broker: Broker,
    enqueue: Enqueue,
    queue: str,
    clock: FakeClock,
    run_out_leases: RunOutLeases,
    lost: int,
) -> None:
    [env] = enqueue()
    res = reserve_one(broker, queue)
    if lost:
        run_out_leases(broker, LEASE)
        res = reserve_after_loss(broker, queue)
    assert broker.nack([Nack(res, clock.time(), "flaky")]) == [True]
    clock.advance(1)  # past retry_at
    again = reserve_one(broker, queue)
    assert (again.id, again.attempt, again.lost) == (env.id, 2 + lost, lost)


@pytest.mark.parametrize("lost", [0, 1])
def test_a_release_keeps_lost(
    broker: Broker, enqueue: Enqueue, queue: str, run_out_leases: RunOutLeases, lost: int
) -> None:
    [env] = enqueue()
    res = reserve_one(broker, queue)
    if lost:
        run_out_leases(broker, LEASE)
        res = reserve_after_loss(broker, queue)
    assert broker.release([res]) == [True]
    again = reserve_one(broker, queue)
    assert (again.id, again.attempt, again.lost) == (env.id, 1 + lost, lost)


def test_retry_dead_resets_lost(
    broker: Broker, enqueue: Enqueue, queue: str, run_out_leases: RunOutLeases
) -> None:
    [env] = enqueue()
    reserve_one(broker, queue)
    run_out_leases(broker, LEASE)
    res = reserve_after_loss(broker, queue)
    assert res.lost == 1
    assert broker.nack([Nack(res, None, "boom")]) == [True]
    assert broker.retry_dead([env.id]) == [env.id]
    again = reserve_one(broker, queue)
    assert (again.id, again.attempt, again.lost) == (env.id, 1, 0)


# -- ack ----------------------------------------------------------------------------


def test_ack_removes_the_job(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue()
    assert broker.ack([reserve_one(broker, queue)]) == [True]
    assert broker.job_info(env.id) is None
    clock.advance(100 * LEASE)
    assert reserve_all(broker, queue) == []


def test_second_ack_of_a_reservation_returns_false(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    enqueue()
    res = reserve_one(broker, queue)
    assert broker.ack([res]) == [True]
    assert broker.ack([res]) == [False]


@requires_fake_clock
def test_ack_answers_each_reservation_in_order(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    enqueue(2)
    [short] = broker.reserve([queue], limit=1, lease=LEASE)
    [long] = broker.reserve([queue], limit=1, lease=3 * LEASE)
    clock.advance(LEASE + 1)
    assert broker.ack([long, short]) == [True, False]
    assert reserve_one(broker, queue).id == short.id


# -- nack -----------------------------------------------------------------------------


@requires_fake_clock
def test_nack_with_retry_at_delivers_the_job_again_from_retry_at(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue()
    res = reserve_one(broker, queue)
    assert broker.nack([Nack(res, clock.time() + 60, "flaky")]) == [True]
    clock.advance(59)  # past the lease, before retry_at
    assert reserve_all(broker, queue) == []
    clock.advance(2)
    again = reserve_one(broker, queue)
    assert (again.id, again.body, again.attempt) == (env.id, env.body, 2)


@requires_fake_clock
def test_job_info_of_a_nacked_job_is_scheduled_then_ready_with_the_reason(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue()
    broker.nack([Nack(reserve_one(broker, queue), clock.time() + 60, "flaky")])
    assert broker.job_info(env.id) == JobInfo(env.id, queue, BrokerJobState.SCHEDULED, 1, "flaky")
    clock.advance(61)
    assert broker.job_info(env.id) == JobInfo(env.id, queue, BrokerJobState.READY, 1, "flaky")


def test_nack_without_retry_at_moves_the_job_to_the_dead_letters(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    [env] = enqueue()
    fail_for_good(broker, queue, "boom")
    assert reserve_all(broker, queue) == []
    [dead] = broker.dead_letters(queue)
    assert (dead.id, dead.queue, dead.body, dead.attempt, dead.reason) == (
        env.id,
        queue,
        env.body,
        1,
        "boom",
    )


def test_dead_letter_keeps_the_attempt_count(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    enqueue()
    broker.nack([Nack(reserve_one(broker, queue), clock.time(), "once")])
    clock.advance(1)  # past retry_at
    fail_for_good(broker, queue)
    assert [dead.attempt for dead in broker.dead_letters(queue)] == [2]


@requires_fake_clock
def test_dead_letter_failed_at_is_the_time_of_the_nack(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    enqueue()
    res = reserve_one(broker, queue)
    clock.advance(5)
    broker.nack([Nack(res, None, "boom")])
    assert [dead.failed_at for dead in broker.dead_letters(queue)] == [clock.time()]


def test_job_info_of_a_dead_job_is_dead_with_the_reason(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    [env] = enqueue()
    fail_for_good(broker, queue, "boom")
    assert broker.job_info(env.id) == JobInfo(env.id, queue, BrokerJobState.DEAD, 1, "boom")


# -- dead letters -------------------------------------------------------------------


def test_dead_letters_filter_by_queue(
    broker: Broker, enqueue: Enqueue, new_queue: Callable[[], str]
) -> None:
    first, second = new_queue(), new_queue()
    [in_first] = enqueue(queue=first)
    [in_second] = enqueue(queue=second)
    fail_for_good(broker, first)
    fail_for_good(broker, second)
    assert ids(broker.dead_letters(first)) == [in_first.id]
    assert ids(broker.dead_letters(second)) == [in_second.id]
    assert sorted(ids(broker.dead_letters())) == sorted([in_first.id, in_second.id])


@requires_fake_clock
def test_dead_letters_are_oldest_first_up_to_limit(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    envelopes = enqueue(3)
    for _ in envelopes:
        [res] = broker.reserve([queue], limit=1, lease=LEASE)
        broker.nack([Nack(res, None, "boom")])
        clock.advance(1)
    assert ids(broker.dead_letters(queue, limit=2)) == ids(envelopes[:2])


def test_retry_dead_by_ids_makes_those_jobs_ready_at_attempt_1(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    first, second = enqueue(2)
    fail_for_good(broker, queue)
    assert broker.retry_dead([first.id, "no-such-job"]) == [first.id]
    again = reserve_one(broker, queue)
    assert (again.id, again.body, again.attempt) == (first.id, first.body, 1)
    assert ids(broker.dead_letters(queue)) == [second.id]


def test_retry_dead_without_ids_makes_every_dead_job_ready_at_attempt_1(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    envelopes = enqueue(2)
    fail_for_good(broker, queue)
    assert sorted(broker.retry_dead()) == sorted(ids(envelopes))
    assert broker.dead_letters(queue) == []
    reserved = reserve_all(broker, queue)
    assert sorted((r.id, r.attempt) for r in reserved) == sorted((e.id, 1) for e in envelopes)


def test_delete_dead_by_ids_deletes_only_those(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    first, second = enqueue(2)
    fail_for_good(broker, queue)
    assert broker.delete_dead([first.id, "no-such-job"]) == 1
    assert ids(broker.dead_letters(queue)) == [second.id]
    assert broker.job_info(first.id) is None


def test_delete_dead_without_ids_deletes_every_dead_letter(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    enqueue(2)
    fail_for_good(broker, queue)
    assert broker.delete_dead() == 2
    assert broker.dead_letters(queue) == []


# -- release ----------------------------------------------------------------------------


def test_release_makes_the_job_ready_at_once_without_counting_the_attempt(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    [env] = enqueue()
    assert broker.release([reserve_one(broker, queue)]) == [True]
    again = reserve_one(broker, queue)
    assert (again.id, again.attempt) == (env.id, 1)


@requires_fake_clock
def test_release_with_ready_at_delivers_the_job_from_ready_at_without_counting_the_attempt(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue()
    assert broker.release([reserve_one(broker, queue)], clock.time() + 60) == [True]
    clock.advance(59)  # past the lease, before ready_at
    assert reserve_all(broker, queue) == []
    clock.advance(2)
    again = reserve_one(broker, queue)
    assert (again.id, again.body, again.attempt) == (env.id, env.body, 1)


def test_release_with_ready_at_to_come_keeps_the_job_scheduled(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    enqueue()
    assert broker.release([reserve_one(broker, queue)], clock.time() + 3600) == [True]
    assert reserve_all(broker, queue) == []
    assert counts(stats_of(broker, queue)) == (0, 1, 0, 0)


def test_release_with_ready_at_in_the_past_makes_the_job_ready_at_once(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue()
    assert broker.release([reserve_one(broker, queue)], clock.time() - 60) == [True]
    again = reserve_one(broker, queue)
    assert (again.id, again.attempt) == (env.id, 1)


@requires_fake_clock
@pytest.mark.requires("job_lookup")
def test_job_info_of_a_job_released_until_later_is_scheduled_then_ready_without_an_error(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue()
    broker.release([reserve_one(broker, queue)], clock.time() + 60)
    assert broker.job_info(env.id) == JobInfo(env.id, queue, BrokerJobState.SCHEDULED, 0)
    clock.advance(61)
    assert broker.job_info(env.id) == JobInfo(env.id, queue, BrokerJobState.READY, 0)


@requires_fake_clock
@pytest.mark.requires("job_lookup")
def test_release_with_ready_at_keeps_the_reason_of_an_earlier_retry(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue()
    broker.nack([Nack(reserve_one(broker, queue), clock.time(), "flaky")])
    clock.advance(1)
    broker.release([reserve_one(broker, queue)], clock.time() + 60)
    assert broker.job_info(env.id) == JobInfo(env.id, queue, BrokerJobState.SCHEDULED, 1, "flaky")


# -- eta ---------------------------------------------------------------------------------


@requires_fake_clock
def test_job_with_eta_is_not_reservable_until_due(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue(eta_at=clock.time() + 60)
    assert reserve_all(broker, queue) == []
    clock.advance(59)
    assert reserve_all(broker, queue) == []
    clock.advance(2)
    again = reserve_one(broker, queue)
    assert (again.id, again.attempt) == (env.id, 1)


def test_job_with_eta_in_the_past_is_ready_at_once(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue(eta_at=clock.time() - 60)
    assert reserve_one(broker, queue).id == env.id


@pytest.mark.requires("job_lookup")
def test_job_with_eta_in_the_future_is_scheduled(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    [env] = enqueue(eta_at=clock.time() + 3600)
    assert counts(stats_of(broker, queue)) == (0, 1, 0, 0)
    assert broker.job_info(env.id) == JobInfo(env.id, queue, BrokerJobState.SCHEDULED, 0)


# -- job_info, stats, purge ------------------------------------------------------------


def test_job_info_of_an_unknown_job_is_none(broker: Broker) -> None:
    assert broker.job_info(new_job_id()) is None


@pytest.mark.requires("job_lookup")
def test_job_info_of_a_ready_then_reserved_job(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    [env] = enqueue()
    assert broker.job_info(env.id) == JobInfo(env.id, queue, BrokerJobState.READY, 0)
    reserve_one(broker, queue)
    assert broker.job_info(env.id) == JobInfo(env.id, queue, BrokerJobState.RESERVED, 1)


def test_stats_count_jobs_by_state_per_queue(
    broker: Broker,
    enqueue: Enqueue,
    queue: str,
    new_queue: Callable[[], str],
    clock: FakeClock,
) -> None:
    other = new_queue()
    enqueue(2)
    fail_for_good(broker, queue)
    enqueue()
    reserve_one(broker, queue)
    enqueue(3)
    enqueue(eta_at=clock.time() + 3600)
    enqueue(queue=other)
    assert counts(stats_of(broker, queue)) == (3, 1, 1, 2)
    assert counts(stats_of(broker, other)) == (1, 0, 0, 0)


def test_stats_list_a_queue_that_held_jobs(broker: Broker, enqueue: Enqueue, queue: str) -> None:
    enqueue()
    broker.ack([reserve_one(broker, queue)])
    assert stats_of(broker, queue) == QueueStats(queue)


@requires_fake_clock
def test_stats_oldest_ready_at_is_the_enqueue_time_of_the_oldest_ready_job(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    first_at = clock.time()
    enqueue()
    clock.advance(5)
    enqueue()
    assert stats_of(broker, queue).oldest_ready_at == first_at
    broker.reserve([queue], limit=1, lease=LEASE)
    assert stats_of(broker, queue).oldest_ready_at == first_at + 5


@requires_fake_clock
def test_stats_oldest_ready_at_of_a_delayed_job_is_its_due_time(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    due_at = clock.time() + 60
    enqueue(eta_at=due_at)
    clock.advance(100)
    assert stats_of(broker, queue).oldest_ready_at == due_at


def test_stats_oldest_ready_at_is_none_without_ready_jobs(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    enqueue()
    reserve_one(broker, queue)
    enqueue(eta_at=clock.time() + 3600)
    assert stats_of(broker, queue).oldest_ready_at is None


@requires_fake_clock
def test_stats_next_scheduled_at_is_the_due_time_of_the_soonest_scheduled_job(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    now = clock.time()
    enqueue(eta_at=now + 60)
    enqueue(eta_at=now + 30)
    enqueue()
    assert stats_of(broker, queue).next_scheduled_at == now + 30
    clock.advance(61)
    stats = stats_of(broker, queue)
    assert (stats.ready, stats.scheduled, stats.next_scheduled_at) == (3, 0, None)


@requires_fake_clock
def test_stats_next_scheduled_at_counts_a_retry_but_not_a_lease(
    broker: Broker, enqueue: Enqueue, queue: str, clock: FakeClock
) -> None:
    now = clock.time()
    enqueue()
    enqueue()
    first, _ = reserve_all(broker, queue, lease=LEASE)
    assert stats_of(broker, queue).next_scheduled_at is None
    assert broker.nack([Nack(first, now + LEASE + 15, "boom")]) == [True]
    assert stats_of(broker, queue).next_scheduled_at == now + LEASE + 15


def test_stats_next_scheduled_at_is_none_without_scheduled_jobs(
    broker: Broker, enqueue: Enqueue, queue: str
) -> None:
    enqueue()
    reserve_one(broker, queue)
    enqueue()
    assert stats_of(broker, queue).next_scheduled_at is None


def test_purge_deletes_ready_and_scheduled_jobs_but_not_running_or_dead_ones(
    broker: Broker,
    enqueue: Enqueue,
    queue: str,
    new_queue: Callable[[], str],
    clock: FakeClock,
) -> None:
    other = new_queue()
    [dead] = enqueue()
    fail_for_good(broker, queue)
    enqueue()
    running = reserve_one(broker, queue)
    enqueue(2)
    enqueue(eta_at=clock.time() + 3600)
    [elsewhere] = enqueue(queue=other)
    assert broker.purge(queue) == 3
    assert counts(stats_of(broker, queue)) == (0, 0, 1, 1)
    assert broker.ack([running]) == [True]
    assert ids(broker.dead_letters(queue)) == [dead.id]
    assert reserve_one(broker, other).id == elsewhere.id


# -- wait ------------------------------------------------------------------------------------


def test_wait_returns_within_its_timeout(broker: Broker, queue: str) -> None:
    started = time.monotonic()
    broker.wait([queue], timeout=0.05)
    assert time.monotonic() - started < 5


# -- several broker objects on one location -------------------------------------------------


@pytest.mark.requires("shared_between_instances")
def test_a_second_broker_on_the_same_location_sees_the_jobs(
    broker: Broker, open_broker: Callable[[], Broker], enqueue: Enqueue, queue: str
) -> None:
    other = open_broker()
    [env] = enqueue()
    res = reserve_one(other, queue)
    assert res.id == env.id
    assert reserve_all(broker, queue) == []
    assert other.ack([res]) == [True]
    assert broker.job_info(env.id) is None


@pytest.mark.requires("shared_between_instances")
def test_two_brokers_reserving_at_once_never_get_the_same_job(
    open_broker: Callable[[], Broker], clock: FakeClock, queue: str
) -> None:
    brokers = [open_broker(), open_broker()]
    envelopes = [make_envelope(clock, queue) for _ in range(100)]
    brokers[0].enqueue(envelopes[:50])
    brokers[1].enqueue(envelopes[50:])
    start = threading.Barrier(len(brokers), timeout=30)

    def reserve_50(broker: Broker) -> list[str]:
        start.wait()
        got: list[str] = []
        while len(got) < 50:
            batch = broker.reserve([queue], limit=min(5, 50 - len(got)), lease=LEASE)
            if not batch:
                break
            got += ids(batch)
        return got

    with ThreadPoolExecutor(len(brokers)) as pool:
        first, second = pool.map(reserve_50, brokers)
    assert (len(first), len(second)) == (50, 50)
    assert set(first) | set(second) == set(ids(envelopes))
