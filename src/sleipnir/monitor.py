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

This module belongs to the core: it imports no web framework. psutil and
prometheus-client are optional (the ``web`` extra); without psutil a beat
carries no host figures, and :func:`prometheus_text` needs prometheus-client.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from .clock import Clock
from .errors import SleipnirError
from .outage import Outage
from .results import Capability, ResultStore, WorkerBeat

__all__ = [
    "BUCKETS",
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

log = logging.getLogger("sleipnir.monitor")

BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
"""Upper bounds (seconds) of the histogram buckets; one more bucket holds the rest (+Inf)."""


class Histogram(msgspec.Struct, kw_only=True):
    """Observations of a duration in seconds, counted per bucket of :data:`BUCKETS`."""

    counts: list[int] = msgspec.field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    """Per bucket (not cumulative); the last one is above the largest bound."""
    sum: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        seconds = max(0.0, seconds)
        index = len(BUCKETS)
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                index = i
                break
        self.counts[index] += 1
        self.sum += seconds
        self.count += 1

    def merge(self, other: Histogram) -> None:
        """Add another histogram's observations to this one."""
        for i, n in enumerate(other.counts[: len(self.counts)]):
            self.counts[i] += n
        self.sum += other.sum
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """Estimate the ``q`` quantile (0..1) as Prometheus does: linear within the bucket."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(BUCKETS):
                    return BUCKETS[-1]
                low = BUCKETS[i - 1] if i else 0.0
                return low + (BUCKETS[i] - low) * (rank - seen) / n
            seen += n
        return BUCKETS[-1]


class TaskFigures(msgspec.Struct, kw_only=True):
    """One worker's figures for one task on one queue, since the worker started."""

    task: str
    queue: str
    succeeded: int = 0
    failed: int = 0
    """Failed for good (went to the dead letters)."""
    retried: int = 0
    """Failed attempts that were scheduled again."""
    cancelled: int = 0
    """Cancelled before they finished (``job.cancel()``)."""
    duration: Histogram = msgspec.field(default_factory=Histogram)
    """Run time of each attempt, start to finish."""
    wait: Histogram = msgspec.field(default_factory=Histogram)
    """Queue wait: enqueue (or due time) to the start of the first attempt."""


class TaskMetrics:
    """A worker's :class:`TaskFigures`, updated from its threads, copied into each beat."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._figures: dict[tuple[str, str], TaskFigures] = {}

    def _get(self, task: str, queue: str) -> TaskFigures:
        figures = self._figures.get((task, queue))
        if figures is None:
            figures = self._figures[(task, queue)] = TaskFigures(task=task, queue=queue)
        return figures

    def observe_wait(self, task: str, queue: str, seconds: float) -> None:
        """Record how long a job waited in its queue before it started."""
        with self._lock:
            self._get(task, queue).wait.observe(seconds)

    def observe_outcome(self, task: str, queue: str, state: str, seconds: float | None) -> None:
        """Record a settled attempt: ``state`` is succeeded, failed, retrying or cancelled."""
        with self._lock:
            figures = self._get(task, queue)
            if state == "succeeded":
                figures.succeeded += 1
            elif state == "retrying":
                figures.retried += 1
            elif state == "cancelled":
                figures.cancelled += 1
            else:
                figures.failed += 1
            if seconds is not None:
                figures.duration.observe(seconds)

    def snapshot(self) -> list[TaskFigures]:
        """A copy of every task's figures, safe to encode while the worker goes on."""
        with self._lock:
            return [
                msgspec.convert(msgspec.to_builtins(f), TaskFigures)
                for _, f in sorted(self._figures.items())
            ]


class HostFigures(msgspec.Struct, kw_only=True):
    """A host's figures over the interval since the previous reading.

    CPU ratios are shares of all CPU time in the interval (0..1). ``cpu_steal`` is
    the time the hypervisor gave this virtual machine's CPUs to others: a host with
    steal above zero for minutes is oversold, and its backlog grows. A ratio is
    ``None`` where the operating system does not report it.
    """

    cpu_count: int
    cpu_user: float | None = None
    cpu_system: float | None = None
    cpu_iowait: float | None = None
    cpu_steal: float | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    memory_total_bytes: int | None = None
    memory_available_bytes: int | None = None
    memory_used_ratio: float | None = None


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:
        return None
    return psutil


class HostSampler:
    """Reads :class:`HostFigures` with psutil.

    CPU ratios cover the time since the previous read; when too little CPU time
    passed to measure (under 50 ms), the previous figures stand, and before any
    the shares since boot.
    """

    def __init__(self) -> None:
        self._psutil = _psutil()
        self._last = self._psutil.cpu_times() if self._psutil else None
        self._figures: dict[str, float] = {}
        self._names: dict[int, str] = {}

    @property
    def available(self) -> bool:
        """False when psutil is not installed (beats then carry no host figures)."""
        return self._psutil is not None

    def process_name(self, pid: int) -> str:
        """A process's command line, shortened to its program and first arguments ("" if
        unknown); remembered per pid."""
        if pid not in self._names:
            name = ""
            if self._psutil is not None:
                try:
                    words = self._psutil.Process(pid).cmdline()
                except Exception:  # gone, or not ours to read: the name is only a label
                    words = []
                words = [os.path.basename(words[0]), *words[1:]] if words else []
                if len(words) > 1 and words[0].startswith("python") and words[1] == "-m":
                    words = words[2:]
                name = " ".join(words)[:120]
            self._names[pid] = name
        return self._names[pid]

    def read(self) -> HostFigures | None:
        """The host's figures now, or ``None`` without psutil."""
        ps = self._psutil
        if ps is None:
            return None
        now = ps.cpu_times()
        figures = cpu_ratios(self._last, now)
        if figures:
            self._last, self._figures = now, figures
        elif self._figures:
            figures = self._figures  # too short an interval: the last figures still stand
        else:
            # The first read, right after start: the shares since boot.
            figures = cpu_ratios(type(now)(*[0.0] * len(now)), now)
        try:
            load1, load5, load15 = os.getloadavg()
        except OSError:
            load1 = load5 = load15 = None  # type: ignore[assignment]
        memory = ps.virtual_memory()
        return HostFigures(
            cpu_count=ps.cpu_count() or 1,
            cpu_user=figures.get("user"),
            cpu_system=figures.get("system"),
            cpu_iowait=figures.get("iowait"),
            cpu_steal=figures.get("steal"),
            load1=load1,
            load5=load5,
            load15=load15,
            memory_total_bytes=int(memory.total),
            memory_available_bytes=int(memory.available),
            memory_used_ratio=(1.0 - memory.available / memory.total) if memory.total else None,
        )


_NOT_IN_TOTAL = ("guest", "guest_nice")  # already counted in user and nice on Linux


def cpu_ratios(before: Any, after: Any) -> dict[str, float]:
    """Share of each CPU time field between two ``cpu_times()`` readings (named tuples).

    Fields the platform does not have (steal and iowait exist on Linux only) are
    absent from the result, and so is every field when less than 50 ms of CPU
    time passed (the first beat, right after start).
    """
    fields = [f for f in after._fields if f not in _NOT_IN_TOTAL]
    deltas = {f: max(0.0, getattr(after, f) - getattr(before, f)) for f in fields}
    total = sum(deltas.values())
    if total < 0.05:
        # Too short an interval to say anything (the first beat, right after start).
        return {}
    return {f: d / total for f, d in deltas.items()}


RUNNING_SHOWN = 50
"""How many of its running jobs a worker names in its heartbeat."""


class RunningJob(msgspec.Struct, kw_only=True):
    """One job a worker runs, as its heartbeat names it (progress: ``read_progress``)."""

    id: str
    task: str
    queue: str
    attempt: int
    started_at: float


class Heartbeat(msgspec.Struct, kw_only=True):
    """What a worker says about itself every few seconds."""

    worker_id: str
    host: str
    pid: int
    ppid: int
    """The parent process: the supervisor, when one runs the worker."""
    parent: str = ""
    """The parent's command line, shortened (``sleipnir run myproj.tasks:app``), when known."""
    queues: list[str]
    concurrency: int
    busy: int
    """Jobs running now."""
    held: int
    """Jobs reserved and not settled (running, waiting for a slot, or settling)."""
    started_at: float
    at: float = 0.0
    interval: float = 5.0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    lost_leases: int = 0
    stopping: bool = False
    broker: str = ""
    """The broker URL, without its password."""
    host_figures: HostFigures | None = None
    tasks: list[TaskFigures] = []
    running: list[RunningJob] = []
    """The jobs running now (at most :data:`RUNNING_SHOWN` of them)."""


class Sample(msgspec.Struct, array_like=True, kw_only=True):
    """The part of a beat kept in the history: totals and host figures at ``at``."""

    at: float
    host: str
    succeeded: int
    failed: int
    retried: int
    busy: int
    concurrency: int
    cpu_steal: float | None = None
    cpu_user: float | None = None
    cpu_system: float | None = None
    cpu_iowait: float | None = None
    load1: float | None = None
    memory_used_ratio: float | None = None


_beat_encoder = msgspec.json.Encoder()
_beat_decoder = msgspec.json.Decoder(Heartbeat)
_sample_decoder = msgspec.json.Decoder(Sample)


def sample_of(beat: Heartbeat) -> Sample:
    """The compact history entry of a beat."""
    h = beat.host_figures
    return Sample(
        at=beat.at,
        host=beat.host,
        succeeded=beat.succeeded,
        failed=beat.failed,
        retried=beat.retried,
        busy=beat.busy,
        concurrency=beat.concurrency,
        cpu_steal=h.cpu_steal if h else None,
        cpu_user=h.cpu_user if h else None,
        cpu_system=h.cpu_system if h else None,
        cpu_iowait=h.cpu_iowait if h else None,
        load1=h.load1 if h else None,
        memory_used_ratio=h.memory_used_ratio if h else None,
    )


def new_worker_id(host: str | None = None, pid: int | None = None) -> str:
    """``host:pid:random``: unique even when a pid is reused after a restart."""
    return f"{host or socket.gethostname()}:{pid or os.getpid()}:{secrets.token_hex(3)}"


class HeartbeatSender:
    """Sends a worker's heartbeat every ``interval`` seconds from a thread of its own.

    ``describe`` returns the worker's beat without time and host figures; the
    sender adds them. A beat that cannot be stored is logged and the next one
    tried: monitoring never stops a worker. Times come from ``clock``; the
    cadence of the thread from the monotonic clock.
    """

    def __init__(
        self,
        store: ResultStore,
        clock: Clock,
        describe: Callable[[], Heartbeat],
        *,
        interval: float = 5.0,
        keep: float = 3600.0,
        sampler: HostSampler | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError("the heartbeat interval must be > 0 seconds")
        self.store = store
        self.clock = clock
        self.describe = describe
        self.interval = interval
        self.keep = keep
        self.ttl = max(3 * interval, interval + 10.0)
        """A worker whose last beat is older than this counts as gone."""
        self.sampler = sampler or HostSampler()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self._lacks = store.lacks(Capability.BEATS)
        """Why this store keeps no heartbeats (``None`` when it keeps them), asked once."""
        self._outage = Outage("the result store", log)

    def send(self, *, stopping: bool = False) -> Heartbeat | None:
        """Build and store one beat now; return it, or ``None`` if it could not be stored."""
        beat = self.describe()
        beat.at = self.clock.time()
        beat.interval = self.interval
        beat.stopping = stopping
        beat.host_figures = self.sampler.read()
        if not beat.parent:
            beat.parent = self.sampler.process_name(beat.ppid)
        # A stopped worker stays listed (as stopping) for a little while, then goes.
        ttl = min(self.ttl, 30.0) if stopping else self.ttl
        record = WorkerBeat(
            worker_id=beat.worker_id,
            at=beat.at,
            expires_at=beat.at + ttl,
            body=_beat_encoder.encode(beat),
            sample=_beat_encoder.encode(sample_of(beat)),
        )
        if self._lacks is not None:
            if not self._warned:
                log.warning("no heartbeats: %s", self._lacks)
                self._warned = True
            return None
        try:
            self.store.beat(record, self.keep)
        except (SleipnirError, OSError) as exc:
            # Monitoring must never stop the work; the next beat tries again. An outage
            # is logged when it begins and when it ends, not at every beat.
            self._outage.failed("heartbeat not stored", exc)
            return None
        self._outage.ok()
        return beat

    def start(self) -> None:
        """Send a first beat now, then one every ``interval`` seconds on a daemon thread."""
        self.send()
        self._thread = threading.Thread(target=self._run, name="sleipnir-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.send()

    def stop(self) -> None:
        """Stop the thread and send a last beat that says the worker stopped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.send(stopping=True)


# -- reading (dashboard, top, /metrics) ----------------------------------------------


def read_beats(store: ResultStore) -> list[Heartbeat]:
    """The latest beat of every live worker, decoded; undecodable ones are skipped."""
    out = []
    for record in store.beats():
        try:
            out.append(_beat_decoder.decode(record.body))
        except msgspec.DecodeError:
            log.warning("undecodable heartbeat of %s skipped", record.worker_id)
    return out


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One decoded history entry."""

    worker_id: str
    sample: Sample


def read_history(store: ResultStore, since: float) -> list[HistoryPoint]:
    """The history samples since ``since``, oldest first; undecodable ones are skipped."""
    out = []
    for entry in store.beat_history(since):
        try:
            out.append(HistoryPoint(entry.worker_id, _sample_decoder.decode(entry.sample)))
        except msgspec.DecodeError:
            continue
    return out


def merged_tasks(beats: Iterable[Heartbeat]) -> list[TaskFigures]:
    """Per task and queue, the figures of all the given workers added up."""
    total: dict[tuple[str, str], TaskFigures] = {}
    for beat in beats:
        for f in beat.tasks:
            into = total.setdefault((f.task, f.queue), TaskFigures(task=f.task, queue=f.queue))
            into.succeeded += f.succeeded
            into.failed += f.failed
            into.retried += f.retried
            into.cancelled += f.cancelled
            into.duration.merge(f.duration)
            into.wait.merge(f.wait)
    return [total[k] for k in sorted(total)]


def throughput_series(
    history: Sequence[HistoryPoint], since: float, until: float, step: float = 60.0
) -> dict[str, list[tuple[float, float]]]:
    """Jobs succeeded, failed and retried per ``step`` seconds, from the workers' totals.

    Each worker's totals only grow, so the jobs it finished between two of its
    samples are the difference, counted in the step of the later sample.
    """
    bins = max(1, int((until - since) // step) + 1)
    series = {name: [0.0] * bins for name in ("succeeded", "failed", "retried")}
    last: dict[str, Sample] = {}
    for point in history:
        s = point.sample
        before = last.get(point.worker_id)
        last[point.worker_id] = s
        if before is None or not since <= s.at <= until:
            continue
        index = min(bins - 1, int((s.at - since) // step))
        series["succeeded"][index] += max(0, s.succeeded - before.succeeded)
        series["failed"][index] += max(0, s.failed - before.failed)
        series["retried"][index] += max(0, s.retried - before.retried)
    return {
        name: [(since + i * step, value) for i, value in enumerate(values)]
        for name, values in series.items()
    }


def steal_is_sustained(
    samples: Sequence[Sample], now: float, *, window: float = 300.0, threshold: float = 0.01
) -> bool:
    """True when every sample of the last ``window`` seconds shows steal at or above
    ``threshold``, and those samples cover most of the window (at least 3 of them)."""
    recent = [s for s in samples if s.at >= now - window and s.cpu_steal is not None]
    if len(recent) < 3 or recent[-1].at - recent[0].at < window * 0.6:
        return False
    return all((s.cpu_steal or 0.0) >= threshold for s in recent)


# -- Prometheus export -------------------------------------------------------------------


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
