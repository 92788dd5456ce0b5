"""The Prometheus export of the beats and the broker's counts (needs prometheus-client)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..clock import Clock
from ..errors import SleipnirError
from ..results import Capability, ResultStore
from .beats import read_beats
from .figures import BUCKETS, Histogram
from .host import HostFigures


def prometheus_text(
    broker: Any,
    store: ResultStore,
    clock: Clock,
    *,
    enqueued: dict[tuple[str, str], int] | None = None,
) -> bytes:
    """The Prometheus text exposition of the queues, the workers' beats and their hosts.

    Counters and histograms come from the live workers' beats, one series per
    worker (``worker`` label), so each only grows; ``sum by (task, queue)`` adds
    them up. Queue depth and the oldest ready job's age come from ``broker.stats()``.
    ``enqueued`` holds the jobs this process enqueued, per (task, queue). Needs
    prometheus-client (the ``web`` extra).
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    families: list[Any] = []
    now = clock.time()

    up = GaugeMetricFamily("sleipnir_broker_up", "1 when the broker answered this scrape")
    depth = GaugeMetricFamily(
        "sleipnir_queue_depth", "Jobs per queue and state", labels=["queue", "state"]
    )
    age = GaugeMetricFamily(
        "sleipnir_queue_oldest_ready_age_seconds",
        "How long the oldest ready job of the queue has been waiting",
        labels=["queue"],
    )
    try:
        stats = broker.stats()
    except SleipnirError:
        up.add_metric([], 0.0)
        stats = []
    else:
        up.add_metric([], 1.0)
    for s in stats:
        for state in ("ready", "scheduled", "running", "dead"):
            depth.add_metric([s.queue, state], float(getattr(s, state)))
        oldest = s.oldest_ready_at
        age.add_metric([s.queue], 0.0 if oldest is None else max(0.0, now - oldest))
    families += [up, depth, age]

    counter = CounterMetricFamily(
        "sleipnir_jobs_enqueued",
        "Jobs enqueued through this HTTP server since it started",
        labels=["task", "queue"],
    )
    for (task, queue), n in sorted((enqueued or {}).items()):
        counter.add_metric([task, queue], float(n))
    families.append(counter)

    try:
        beats = read_beats(store) if store.keeps(Capability.BEATS) else []
    except SleipnirError:
        beats = []
    outcome = {
        name: CounterMetricFamily(
            f"sleipnir_jobs_{name}", help_text, labels=["task", "queue", "worker"]
        )
        for name, help_text in (
            ("succeeded", "Jobs that succeeded, per worker since it started"),
            ("failed", "Jobs that failed for good (dead letters), per worker since it started"),
            ("retried", "Failed attempts scheduled again, per worker since it started"),
            ("cancelled", "Jobs cancelled before they finished, per worker since it started"),
        )
    }
    duration = HistogramMetricFamily(
        "sleipnir_job_duration_seconds",
        "Run time of each attempt",
        labels=["task", "queue", "worker"],
    )
    wait = HistogramMetricFamily(
        "sleipnir_job_queue_wait_seconds",
        "Enqueue (or due time) to the start of the first attempt",
        labels=["task", "queue", "worker"],
    )
    workers = GaugeMetricFamily("sleipnir_workers", "Live workers per host", labels=["host"])
    busy = GaugeMetricFamily("sleipnir_worker_busy", "Jobs running now", labels=["worker", "host"])
    slots = GaugeMetricFamily(
        "sleipnir_worker_concurrency", "Jobs a worker runs at once", labels=["worker", "host"]
    )
    per_host: dict[str, int] = {}
    hosts: dict[str, HostFigures] = {}
    for beat in sorted(beats, key=lambda b: b.at):
        if not beat.stopping:
            per_host[beat.host] = per_host.get(beat.host, 0) + 1
            busy.add_metric([beat.worker_id, beat.host], float(beat.busy))
            slots.add_metric([beat.worker_id, beat.host], float(beat.concurrency))
        if beat.host_figures is not None:
            hosts[beat.host] = beat.host_figures
        # A stopped worker's final totals stay exported until its beat expires.
        for f in beat.tasks:
            labels = [f.task, f.queue, beat.worker_id]
            outcome["succeeded"].add_metric(labels, float(f.succeeded))
            outcome["failed"].add_metric(labels, float(f.failed))
            outcome["retried"].add_metric(labels, float(f.retried))
            outcome["cancelled"].add_metric(labels, float(f.cancelled))
            duration.add_metric(labels, _buckets(f.duration), f.duration.sum)
            wait.add_metric(labels, _buckets(f.wait), f.wait.sum)
    for host, n in sorted(per_host.items()):
        workers.add_metric([host], float(n))
    families += [*outcome.values(), duration, wait, workers, busy, slots]

    host_gauges = {
        field: GaugeMetricFamily(name, help_text, labels=["host"])
        for field, name, help_text in (
            ("cpu_steal", "sleipnir_host_cpu_steal_ratio", "CPU time stolen by the hypervisor"),
            ("cpu_user", "sleipnir_host_cpu_user_ratio", "Share of CPU time in user mode"),
            ("cpu_system", "sleipnir_host_cpu_system_ratio", "Share of CPU time in the kernel"),
            ("cpu_iowait", "sleipnir_host_cpu_iowait_ratio", "Share of CPU time waiting for I/O"),
            ("load1", "sleipnir_host_load1", "One-minute load average"),
            ("memory_used_ratio", "sleipnir_host_memory_used_ratio", "Share of memory in use"),
            ("memory_available_bytes", "sleipnir_host_memory_available_bytes", "Memory available"),
        )
    }  # fmt: skip
    for host, figures in sorted(hosts.items()):
        for field, gauge in host_gauges.items():
            value = getattr(figures, field)
            if value is not None:
                gauge.add_metric([host], float(value))
    families += list(host_gauges.values())

    class _Collector:
        def collect(self) -> Iterable[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    text: bytes = generate_latest(registry)
    return text


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs, as Prometheus histograms want them."""
    out = []
    seen = 0
    for bound, n in zip(BUCKETS, h.counts, strict=False):
        seen += n
        out.append((repr(bound), float(seen)))
    out.append(("+Inf", float(h.count)))
    return out
