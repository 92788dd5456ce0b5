"""Monitoring: worker heartbeats, host figures, per-task figures and their Prometheus export.

Every worker sends a :class:`Heartbeat` every few seconds through the result
store (:meth:`ResultStore.beat`), so monitoring works on every backend. A beat
carries who the worker is (host, pid, parent pid, queues, concurrency, how
busy it is), its totals since it started, its per task and queue figures
(:class:`TaskFigures`: counts and histograms of queue wait and run time) and
its host's figures (:class:`HostFigures`: CPU steal, user, system and iowait
as ratios of the interval, load, memory), read with psutil. A compact
:class:`Sample` of each beat is kept for an hour (by default) for plots.

Readers (the dashboard, ``sleipnir top``, ``/metrics``) see only what the
beats say: a process cannot see another process's counters. Counters are
per worker; Prometheus sums them (``sum by (task, queue)``).

The package: :mod:`.beats` (the beat as data, its readers), :mod:`.sender` (the
worker's heartbeat thread), :mod:`.figures` (per task and queue histograms),
:mod:`.host` (psutil's figures), :mod:`.prometheus` (the export).

This package belongs to the core: it imports no web framework. psutil and
prometheus-client are optional (the ``web`` extra); without psutil a beat
carries no host figures, and :func:`prometheus_text` needs prometheus-client.
"""

from __future__ import annotations

from .beats import (
    RUNNING_SHOWN,
    Heartbeat,
    HistoryPoint,
    RunningJob,
    Sample,
    new_worker_id,
    read_beats,
    read_history,
    sample_of,
    throughput_series,
)
from .figures import BUCKETS, Histogram, TaskFigures, TaskMetrics, merged_tasks
from .host import HostFigures, HostSampler, cpu_ratios, steal_is_sustained
from .prometheus import prometheus_text
from .sender import HeartbeatSender

__all__ = [
    "BUCKETS",
    "RUNNING_SHOWN",
    "Heartbeat",
    "HeartbeatSender",
    "Histogram",
    "HistoryPoint",
    "HostFigures",
    "HostSampler",
    "RunningJob",
    "Sample",
    "TaskFigures",
    "TaskMetrics",
    "cpu_ratios",
    "merged_tasks",
    "new_worker_id",
    "prometheus_text",
    "read_beats",
    "read_history",
    "sample_of",
    "steal_is_sustained",
    "throughput_series",
]
