from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import sleipnir
from sleipnir import (
    App,
    ConfigurationError,
    EncodeError,
    InvalidArgumentsError,
    JobState,
    PayloadTooLargeError,
    UnknownTaskError,
)
from sleipnir.testing import FakeClock


def test_public_names_are_exactly_these() -> None:
    assert set(sleipnir.__all__) == {
        "App", "Broker", "BrokerConnectionError", "BrokerError", "Clock", "ConfigurationError",
        "DecodeError", "EncodeError", "Fail", "InvalidArgumentsError", "Job", "JobFailedError",
        "JobHandle", "JobNotFoundError", "JobState", "PayloadTooLargeError", "ResultStore",
        "ResultTimeoutError", "Retry", "SleipnirError", "SystemClock", "Task", "TaskControl",
        "UnknownTaskError", "Worker", "__version__",
    }  # fmt: skip
    for name in sleipnir.__all__:
        assert getattr(sleipnir, name) is not None


def test_every_error_is_a_sleipnir_error_and_task_control_is_not() -> None:
    for name in ("BrokerConnectionError", "PayloadTooLargeError", "JobFailedError",
                 "UnknownTaskError", "InvalidArgumentsError", "DecodeError"):  # fmt: skip
        assert issubclass(getattr(sleipnir, name), sleipnir.SleipnirError)
    assert not issubclass(sleipnir.Retry, sleipnir.SleipnirError)
    assert not issubclass(sleipnir.Fail, sleipnir.SleipnirError)


def test_task_registers_under_its_function_name_with_options(app: App) -> None:
    @app.task(queue="images", retries=5, timeout=60.0, priority=3)
    def resize(path: str, width: int) -> str:
        return f"{path}@{width}"

    assert app.get_task("resize") is resize
    assert (resize.options.queue, resize.options.retries, resize.options.priority) == (
        "images", 5, 3
    )  # fmt: skip
    assert resize("a.jpg", 200) == "a.jpg@200"  # calling it runs it here


def test_two_tasks_with_one_name_are_refused(app: App) -> None:
    @app.task
    def send() -> None: ...

    with pytest.raises(ConfigurationError, match="already registered"):

        @app.task(name="send")
        def other() -> None: ...


def test_unknown_task_names_the_registered_ones(app: App) -> None:
    @app.task
    def known() -> None: ...

    with pytest.raises(UnknownTaskError, match="registered: known"):
        app.get_task("nope")


def test_default_app_uses_sleipnir_db_in_the_working_directory_without_creating_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = App()
    assert app.broker_url == f"sqlite://{tmp_path / 'sleipnir.db'}"
    assert not (tmp_path / "sleipnir.db").exists()  # nothing connects before first use


def test_from_env_reads_sleipnir_variables() -> None:
    env = {"SLEIPNIR_BROKER": "memory://", "SLEIPNIR_LEASE": "12.5"}
    env |= {"SLEIPNIR_MAX_PAYLOAD_BYTES": "2048", "SLEIPNIR_QUEUE": "mail"}
    app = App.from_env(env)
    assert (app.broker_url, app.lease, app.max_payload_bytes, app.default_queue) == (
        "memory://", 12.5, 2048, "mail"
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="SLEIPNIR_LEASE"):
        App.from_env({"SLEIPNIR_LEASE": "soon"})


def test_unknown_broker_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no broker for URL scheme"):
        _ = App(broker="kafka://x").broker


def test_arguments_that_do_not_fit_are_refused_and_nothing_is_stored(app: App) -> None:
    @app.task
    def resize(path: str, width: int) -> None: ...

    with pytest.raises(InvalidArgumentsError, match="width"):
        resize.delay("a.jpg")  # type: ignore[call-arg]
    with pytest.raises(EncodeError):
        resize.delay("a.jpg", width=object())  # type: ignore[arg-type]
    assert app.broker.stats() == []


def test_payload_over_the_limit_is_refused_before_the_broker(clock: FakeClock) -> None:
    app = App(broker="memory://", clock=clock, max_payload_bytes=1000)

    @app.task
    def store(blob: str) -> None: ...

    with pytest.raises(PayloadTooLargeError, match="over the limit of 1000 bytes"):
        store.map([("x",), ("y" * 2000,)])  # one too large: none of the batch is stored
    assert app.broker.stats() == []
    store.delay("x" * 500)
    assert app.broker.stats()[0].ready == 1


def test_default_payload_limit_is_one_mebibyte(app: App) -> None:
    @app.task
    def store(blob: str) -> None: ...

    with pytest.raises(PayloadTooLargeError):
        store.delay("x" * (1024 * 1024))


def test_delay_and_at_schedule_a_job(app: App, clock: FakeClock) -> None:
    @app.task
    def later() -> None: ...

    by_delay = later.enqueue(delay=10.0)
    by_time = later.enqueue(at=clock.time() + 20.0)
    assert by_delay.status() == JobState.SCHEDULED == by_time.status()
    clock.advance(10.0)
    assert (by_delay.status(), by_time.status()) == ("queued", "scheduled")
    with pytest.raises(ValueError, match="either delay"):
        later.enqueue(delay=1.0, at=clock.time())


def test_enqueue_overrides_queue_and_priority_and_map_is_one_batch(app: App) -> None:
    @app.task
    def work(i: int) -> None: ...

    work.enqueue((1,), queue="urgent", priority=5)
    handles = work.map([(i,) for i in range(10)])
    assert len(handles) == 10
    stats = {s.queue: s.ready for s in app.broker.stats()}
    assert stats == {"urgent": 1, "default": 10}
    reserved = app.broker.reserve(["urgent"], 1, 30.0)
    assert reserved[0].priority == 5


def test_job_ids_are_unique_and_time_ordered(app: App) -> None:
    @app.task
    def work(i: int) -> None: ...

    ids = [work.delay(i).id for i in range(500)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 500
    assert all(len(i) == 26 for i in ids)


def test_delay_async(app: App) -> None:
    @app.task
    def work(i: int) -> None: ...

    handle = asyncio.run(work.delay_async(1))
    assert handle.status() == "queued"


def test_status_of_an_unknown_job_is_unknown(app: App) -> None:
    assert app.job("nope").status() == JobState.UNKNOWN
