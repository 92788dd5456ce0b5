"""Heartbeats as data: what a beat carries (:class:`Heartbeat`, :class:`RunningJob`), its
compact :class:`Sample` for plots, and their readers.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from ..results import ResultStore
from .figures import TaskFigures
from .host import HostFigures

log = logging.getLogger("sleipnir.monitor")

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
