"""Host figures read with psutil (optional): CPU steal, user, system and iowait as ratios
of an interval, load, memory; and when steal is sustained.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .beats import Sample


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


def steal_is_sustained(
    samples: Sequence[Sample], now: float, *, window: float = 300.0, threshold: float = 0.01
) -> bool:
    """True when every sample of the last ``window`` seconds shows steal at or above
    ``threshold``, and those samples cover most of the window (at least 3 of them)."""
    recent = [s for s in samples if s.at >= now - window and s.cpu_steal is not None]
    if len(recent) < 3 or recent[-1].at - recent[0].at < window * 0.6:
        return False
    return all((s.cpu_steal or 0.0) >= threshold for s in recent)
