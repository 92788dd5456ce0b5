"""Heartbeats, per-task figures, host figures and their readers, on the fake clock."""

from __future__ import annotations

import logging
import random
import socket
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sleipnir import App, Worker
from sleipnir.brokers.memory import MemoryResultStore
from sleipnir.monitor import (
    BUCKETS,
    HeartbeatSender,
    Histogram,
    HistoryPoint,
    Sample,
    TaskMetrics,
    cpu_ratios,
    merged_tasks,
    prometheus_text,
    read_beats,
    read_history,
    steal_is_sustained,
    throughput_series,
)
from sleipnir.results import ResultRecord, ResultStore
from sleipnir.testing import FakeClock

from .conftest import drain


def test_histogram_counts_per_bucket_and_estimates_quantiles() -> None:
    h = Histogram()
    for seconds in (0.002, 0.002, 0.02, 0.2, 2.0, 5000.0):
        h.observe(seconds)
    assert h.count == 6
    assert h.sum == pytest.approx(5002.224)
    assert sum(h.counts) == 6
    assert h.counts[BUCKETS.index(0.0025)] == 2
    assert h.counts[-1] == 1  # above the largest bound
    assert h.quantile(0.25) == pytest.approx(0.001 + 0.0015 * 0.75)
    assert 0.01 < h.quantile(0.5) <= 0.025  # type: ignore[operator]
    assert h.quantile(1.0) == BUCKETS[-1]
    assert Histogram().quantile(0.5) is None
    other = Histogram()
    other.observe(0.02)
    h.merge(other)
    assert (h.count, h.counts[BUCKETS.index(0.025)]) == (7, 2)


CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")


def test_cpu_ratios_are_shares_of_the_interval() -> None:
    before = CpuTimes(100, 0, 50, 800, 10, 0, 0, 40, 5, 0)
    after = CpuTimes(130, 0, 60, 830, 10, 0, 0, 70, 25, 0)  # guest is inside user: not added
    ratios = cpu_ratios(before, after)
    assert ratios["steal"] == pytest.approx(30 / 100)
    assert ratios["user"] == pytest.approx(30 / 100)
    assert ratios["system"] == pytest.approx(10 / 100)
    assert ratios["iowait"] == 0.0
    assert "guest" not in ratios
    assert cpu_ratios(after, after) == {}  # no time passed: nothing to say


def test_a_worker_beats_with_its_figures_per_task_and_queue(app: App, clock: FakeClock) -> None:
    @app.task(retries=1, backoff=0.0)
    def flaky(fail: bool) -> int:
        if fail:
            raise ValueError("no")
        return 1

    flaky.delay(False)
    flaky.delay(False)
    flaky.enqueue([True], queue="other")
    clock.advance(2.0)  # the jobs waited two seconds in their queues
    worker = Worker(app, ["default", "other"], burst=True, rng=random.Random(0))
    assert worker.run() == 0
    beats = read_beats(app.results)
    assert [b.worker_id for b in beats] == [worker.id]
    [beat] = beats
    assert beat.stopping is True  # the last beat, sent as it stopped
    assert (beat.succeeded, beat.failed, beat.retried) == (2, 1, 1)
    assert beat.queues == worker.queues
    assert beat.host_figures is not None and beat.host_figures.cpu_count >= 1
    figures = {(f.task, f.queue): f for f in beat.tasks}
    default = figures[("flaky", "default")]
    assert (default.succeeded, default.failed, default.retried) == (2, 0, 0)
    assert default.wait.count == 2
    assert default.wait.sum == pytest.approx(4.0)
    assert default.duration.count == 2
    other = figures[("flaky", "other")]
    assert (other.failed, other.retried, other.wait.count, other.duration.count) == (1, 1, 1, 2)
    history = read_history(app.results, clock.time() - 60)
    assert [p.worker_id for p in history] == [worker.id, worker.id]  # at start and at stop
    assert (history[0].sample.succeeded, history[-1].sample.succeeded) == (0, 2)


def test_beats_expire_when_a_worker_stops_beating(app: App, clock: FakeClock) -> None:
    sender = HeartbeatSender(app.results, app.clock, Worker(app, heartbeat=None).describe)
    assert sender.send() is not None
    assert len(read_beats(app.results)) == 1
    clock.advance(sender.ttl + 0.1)
    assert read_beats(app.results) == []


def test_a_beat_that_cannot_be_stored_is_logged_and_the_worker_goes_on(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = App(
        broker="memory://",
        results=f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.2",
        clock=clock,
    )
    sender = HeartbeatSender(app.results, clock, Worker(app, heartbeat=None).describe)
    with caplog.at_level(logging.WARNING, "sleipnir.monitor"):
        assert sender.send() is None
    assert "heartbeat not stored" in caplog.text


def _sample(at: float, succeeded: int, failed: int = 0, steal: float | None = 0.0) -> Sample:
    return Sample(
        at=at, host="h", succeeded=succeeded, failed=failed, retried=0, busy=0, concurrency=1,
        cpu_steal=steal,
    )  # fmt: skip


def test_throughput_counts_each_workers_increase_per_step() -> None:
    history = [
        HistoryPoint("a", _sample(0, 0)),
        HistoryPoint("b", _sample(5, 100)),  # b's first sample: no increase known yet
        HistoryPoint("a", _sample(30, 10, 1)),
        HistoryPoint("b", _sample(65, 130)),
        HistoryPoint("a", _sample(90, 25, 1)),
    ]
    series = throughput_series(history, 0, 119, 60)
    assert series["succeeded"] == [(0, 10.0), (60, 45.0)]
    assert series["failed"] == [(0, 1.0), (60, 0.0)]


def test_steal_is_flagged_only_when_sustained() -> None:
    now = 1000.0
    steady = [_sample(now - 300 + 30 * i, 0, steal=0.05) for i in range(11)]
    assert steal_is_sustained(steady, now, window=300, threshold=0.01)
    dip = [*steady[:5], _sample(now - 140, 0, steal=0.0), *steady[6:]]
    assert not steal_is_sustained(dip, now, window=300, threshold=0.01)
    assert not steal_is_sustained(steady[-2:], now, window=300, threshold=0.01)  # too short


def test_merged_tasks_add_up_workers(app: App) -> None:
    metrics = [TaskMetrics(), TaskMetrics()]
    for m in metrics:
        m.observe_outcome("t", "q", "succeeded", 0.1)
        m.observe_wait("t", "q", 0.5)
    m = metrics[0]
    m.observe_outcome("t", "q", "retrying", 0.2)
    worker = Worker(app, heartbeat=None)
    beats: list[Any] = []
    for m in metrics:
        beat = worker.describe()
        beat.tasks = m.snapshot()
        beats.append(beat)
    [total] = merged_tasks(beats)
    assert (total.succeeded, total.retried, total.duration.count, total.wait.count) == (2, 1, 3, 2)


def test_prometheus_text_from_beats_and_broker(app: App, clock: FakeClock) -> None:
    @app.task
    def noop() -> None:
        return None

    for _ in range(3):
        noop.delay()
    worker = drain(app)
    noop.enqueue(delay=60)
    text = prometheus_text(app.broker, app.results, clock, enqueued={("noop", "default"): 4})
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    key = (("queue", "default"), ("task", "noop"), ("worker", worker.id))
    assert samples[("sleipnir_jobs_succeeded_total", key)] == 3
    assert samples[("sleipnir_jobs_enqueued_total", key[:2])] == 4
    assert samples[("sleipnir_queue_depth", (("queue", "default"), ("state", "scheduled")))] == 1
    assert samples[("sleipnir_broker_up", ())] == 1


class _StoreWithoutBeats(ResultStore):
    """A result store written before heartbeats: only the original four methods."""

    url = "memory://"

    def __init__(self) -> None:
        self.inner = MemoryResultStore()

    def put(self, records: Sequence[ResultRecord]) -> None:
        self.inner.put(records)

    def get(self, job_id: str) -> ResultRecord | None:
        return self.inner.get(job_id)

    def delete(self, job_ids: Sequence[str]) -> int:
        return self.inner.delete(job_ids)

    def purge_expired(self) -> int:
        return self.inner.purge_expired()


def test_a_store_without_heartbeats_is_reported_once_and_work_goes_on(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(broker="memory://", results=_StoreWithoutBeats(), clock=clock)

    @app.task
    def noop() -> None:
        return None

    noop.delay()
    sender = HeartbeatSender(app.results, app.clock, Worker(app, heartbeat=None).describe)
    with caplog.at_level(logging.WARNING, "sleipnir.monitor"):
        assert sender.send() is None
        assert sender.send() is None
        assert drain(app).stats.succeeded == 1
    assert caplog.text.count("no heartbeats:") == 2  # once per sender
