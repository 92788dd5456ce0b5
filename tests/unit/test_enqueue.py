"""Producing jobs: delay, enqueue, map, delay_async, and what is refused before storing."""

from __future__ import annotations

import asyncio

import pytest

from sleipnir import (
    App,
    EncodeError,
    InvalidArgumentsError,
    JobHandle,
    JobState,
    PayloadTooLargeError,
)
from sleipnir.job import decode_job
from sleipnir.testing import FakeClock

from .conftest import drain

MiB = 1024 * 1024


def test_delay_returns_a_handle_on_a_queued_job_and_runs_no_task_code(app: App) -> None:
    ran: list[int] = []

    @app.task
    def work(i: int) -> None:
        ran.append(i)

    handle = work.delay(1)
    assert isinstance(handle, JobHandle)
    assert handle.status() == JobState.QUEUED == "queued"
    assert ran == []
    assert [(s.queue, s.ready) for s in app.broker.stats()] == [("default", 1)]


def test_the_stored_job_carries_the_call(app: App, clock: FakeClock) -> None:
    @app.task
    def resize(path: str, width: int = 100) -> None: ...

    handle = resize.delay("a.jpg", width=200)
    (res,) = app.broker.reserve(["default"], 10, 30.0)
    job = decode_job(res.body)
    assert (job.id, job.task, job.args, job.kwargs) == (
        handle.id,
        "resize",
        ["a.jpg"],
        {"width": 200},
    )
    assert job.enqueued_at == clock.time()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("a.jpg",), {}), (("a.jpg", 1, 2), {}), (("a.jpg", 1), {"height": 3}), ((), {"width": 1})],
)
def test_arguments_that_do_not_fit_are_refused_and_nothing_is_stored(
    app: App, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    @app.task
    def resize(path: str, width: int) -> None: ...

    with pytest.raises(InvalidArgumentsError, match=r"arguments do not fit resize\(path"):
        resize.delay(*args, **kwargs)
    with pytest.raises(InvalidArgumentsError):
        resize.enqueue(args, kwargs)
    assert app.broker.stats() == []


def test_arguments_that_are_not_json_raise_encode_error_and_nothing_is_stored(app: App) -> None:
    @app.task
    def store(value: object) -> None: ...

    with pytest.raises(EncodeError, match="not JSON-serialisable"):
        store.delay(object())
    with pytest.raises(EncodeError):
        store.map([("fine",), (object(),)])  # one bad call: none of the batch is stored
    assert app.broker.stats() == []


def test_payload_over_the_apps_limit_is_refused_and_nothing_is_stored(clock: FakeClock) -> None:
    app = App(broker="memory://", clock=clock, max_payload_bytes=1000)

    @app.task
    def store(blob: str) -> None: ...

    with pytest.raises(PayloadTooLargeError, match="over the limit of 1000 bytes") as info:
        store.delay("y" * 2000)
    assert info.value.limit == 1000 and info.value.size > 2000
    with pytest.raises(PayloadTooLargeError):
        store.map([("x",), ("y" * 2000,)])
    assert app.broker.stats() == []
    store.delay("x" * 500)  # under the limit: accepted
    assert app.broker.stats()[0].ready == 1


def test_default_payload_limit_is_one_mebibyte(app: App) -> None:
    @app.task
    def store(blob: str) -> None: ...

    assert app.max_payload_bytes == MiB
    with pytest.raises(PayloadTooLargeError):
        store.delay("x" * (2 * MiB))
    assert app.broker.stats() == []
    store.delay("x" * (MiB - 1000))
    assert app.broker.stats()[0].ready == 1


def test_enqueue_with_delay_is_scheduled_until_the_clock_gets_there(
    app: App, clock: FakeClock
) -> None:
    @app.task
    def later() -> None: ...

    handle = later.enqueue(delay=10.0)
    assert handle.status() == "scheduled"
    assert app.broker.reserve(["default"], 1, 30.0) == []
    clock.advance(9.99)
    assert handle.status() == "scheduled"
    clock.advance(0.01)
    assert handle.status() == "queued"


def test_enqueue_at_an_epoch_time_is_scheduled_until_then(app: App, clock: FakeClock) -> None:
    @app.task
    def later() -> None: ...

    handle = later.enqueue(at=clock.time() + 20.0)
    assert handle.status() == "scheduled"
    clock.advance(10.0)
    assert handle.status() == "scheduled"
    clock.advance(10.0)
    assert handle.status() == "queued"


def test_a_time_in_the_past_means_now(app: App, clock: FakeClock) -> None:
    @app.task
    def later() -> None: ...

    assert later.enqueue(at=clock.time() - 60.0).status() == "queued"
    assert later.enqueue(delay=0.0).status() == "queued"


def test_a_scheduled_job_runs_once_due(app: App, clock: FakeClock) -> None:
    ran: list[float] = []

    @app.task
    def later() -> None:
        ran.append(clock.time())

    start = clock.time()
    handle = later.enqueue(delay=10.0)
    drain(app)
    assert ran == []
    clock.advance(10.0)
    drain(app)
    assert ran == [start + 10.0]
    assert handle.status() == "succeeded"


def test_delay_and_at_together_or_a_negative_delay_raise_value_error(
    app: App, clock: FakeClock
) -> None:
    @app.task
    def later() -> None: ...

    with pytest.raises(ValueError, match="either delay"):
        later.enqueue(delay=1.0, at=clock.time() + 5.0)
    with pytest.raises(ValueError, match="delay must be finite and >= 0"):
        later.enqueue(delay=-1.0)
    assert app.broker.stats() == []


def test_priority_and_queue_overrides_reach_the_job(app: App) -> None:
    @app.task(queue="images", priority=1)
    def work(i: int) -> None: ...

    work.enqueue((1,), queue="urgent", priority=5)
    work.delay(2)
    (urgent,) = app.broker.reserve(["urgent"], 10, 30.0)
    (normal,) = app.broker.reserve(["images"], 10, 30.0)
    assert (urgent.queue, urgent.priority) == ("urgent", 5)
    assert (decode_job(urgent.body).queue, decode_job(urgent.body).priority) == ("urgent", 5)
    assert (normal.queue, normal.priority) == ("images", 1)  # the task's defaults


def test_map_enqueues_one_job_per_call_in_one_broker_call(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task
    def work(i: int, tag: str = "") -> None: ...

    batches: list[int] = []
    enqueue = app.broker.enqueue

    def counting(envelopes):  # type: ignore[no-untyped-def]
        batches.append(len(envelopes))
        enqueue(envelopes)

    monkeypatch.setattr(app.broker, "enqueue", counting)
    handles = work.map([(i,) for i in range(10)] + [[10, "last"]])
    assert batches == [11]
    assert len({h.id for h in handles}) == 11
    assert app.broker.stats()[0].ready == 11
    reserved = {r.id: decode_job(r.body).args for r in app.broker.reserve(["default"], 20, 30.0)}
    assert [reserved[h.id] for h in handles] == [[i] for i in range(10)] + [[10, "last"]]


def test_job_ids_are_unique_time_ordered_strings(app: App) -> None:
    @app.task
    def work(i: int) -> None: ...

    ids = [work.delay(i).id for i in range(300)]
    ids += [h.id for h in work.map([(i,) for i in range(300)])]
    assert all(isinstance(i, str) and len(i) == 26 for i in ids)
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)


def test_delay_async_enqueues_from_an_event_loop(app: App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    async def produce() -> JobHandle[int]:
        return await add.delay_async(2, b=3)

    handle = asyncio.run(produce())
    assert handle.status() == "queued"
    drain(app)
    assert handle.result(timeout=1.0) == 5


def test_delay_async_checks_arguments_too(app: App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(InvalidArgumentsError):
        asyncio.run(add.delay_async(1))  # type: ignore[call-arg]
    assert app.broker.stats() == []


def test_a_handle_by_id_sees_the_same_job(app: App) -> None:
    @app.task
    def work() -> None: ...

    handle = work.delay()
    assert app.job(handle.id) == handle
    assert app.job(handle.id).status() == "queued"
    assert app.job("no-such-job").status() == JobState.UNKNOWN


@pytest.mark.parametrize("priority", [256, -256, 10**6, True, 1.5])
def test_a_priority_outside_minus_255_to_255_or_not_an_int_is_refused(
    app: App, priority: object
) -> None:
    @app.task
    def job() -> None: ...

    with pytest.raises(ValueError, match="priority"):
        job.enqueue(priority=priority)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="priority"):
        app.task(name="other", priority=priority)(lambda: None)  # type: ignore[call-overload]
    assert app.broker.stats() == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_infinite_delay_is_refused(app: App, bad: float) -> None:
    @app.task
    def job() -> None: ...

    with pytest.raises(ValueError, match="delay must be finite"):
        job.enqueue(delay=bad)
    with pytest.raises(ValueError, match="at must be a finite"):
        job.enqueue(at=bad)
    assert app.broker.stats() == []
