"""What a result store keeps beyond outcomes is declared, and asked once; no caller learns
it from a NotImplementedError."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from sleipnir import App
from sleipnir.brokers.memory import MemoryResultStore
from sleipnir.results import Capability, ResultRecord, ResultStore, WorkerBeat
from sleipnir.testing import FakeClock

from .conftest import drain


class _Outcomes(ResultStore):
    """Only the four methods every store has."""

    url = "memory://"

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.inner = MemoryResultStore(clock=clock)

    def put(self, records: Sequence[ResultRecord]) -> None:
        self.inner.put(records)

    def get(self, job_id: str) -> ResultRecord | None:
        return self.inner.get(job_id)

    def delete(self, job_ids: Sequence[str]) -> int:
        return self.inner.delete(job_ids)

    def purge_expired(self) -> int:
        return self.inner.purge_expired()


class _WithBeats(_Outcomes):
    def beat(self, beat: WorkerBeat, keep: float) -> None: ...

    def beats(self) -> list[WorkerBeat]:
        return []

    def beat_history(self, since: float) -> list:  # type: ignore[type-arg]
        return []


def test_built_in_stores_keep_everything(tmp_path: Path) -> None:
    app = App(f"sqlite:///{tmp_path}/jobs.db")
    for store in (MemoryResultStore(), app.results):
        assert store.capabilities == frozenset(Capability)
        assert store.lacks(*Capability) is None
    app.close()


def test_a_store_that_does_not_declare_keeps_the_groups_it_overrides() -> None:
    assert _Outcomes.capabilities == frozenset()
    assert _WithBeats.capabilities == {Capability.BEATS}
    store = _WithBeats()
    assert store.keeps(Capability.BEATS) and not store.keeps(Capability.KEYS)
    assert store.lacks(Capability.BEATS) is None
    assert store.lacks(Capability.KEYS, Capability.SLOTS) == (
        "_WithBeats keeps no claimed keys and no limits"
    )


def test_a_worker_on_a_store_without_keys_or_limits_says_so_once_and_runs_the_jobs(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = App("memory://", results=_Outcomes(clock), clock=clock)

    @app.task(concurrency=1, rate_limit="100/s")
    def limited(n: int) -> int:
        return n

    handles = [limited.delay(n) for n in range(3)]
    with caplog.at_level(logging.WARNING, "sleipnir.worker"):
        worker = drain(app)
    assert worker.stats.succeeded == 3
    assert [h.result(timeout=1.0) for h in handles] == [0, 1, 2]
    assert caplog.text.count("limits are not kept on this result store") == 1
    assert caplog.text.count("cancel requests are not seen on this result store") == 1
    assert "_Outcomes keeps no limits" in caplog.text


def test_no_module_catches_not_implemented_error() -> None:
    src = Path(__file__).parents[2] / "src"
    found = subprocess.run(
        ["grep", "-rn", "--include=*.py", "except.*NotImplementedError", str(src)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert found == "", found


def test_a_job_the_broker_does_not_hold_is_gone_or_cannot_be_told(clock: FakeClock) -> None:
    """``job_info`` returns None for both; the broker says which of the two it means."""
    app = App("memory://", clock=clock)
    gone = app.broker.not_held("01J")
    assert gone == "no job 01J (never enqueued here, or its record expired)"
    app.broker.finds_queued_jobs = False  # as RabbitMQ: it cannot look into a queue
    maybe = app.broker.not_held("01J")
    assert "may still wait in its queue" in maybe
    assert maybe != gone
