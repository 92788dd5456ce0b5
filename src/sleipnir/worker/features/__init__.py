"""The worker's built-in features, each a :class:`~sleipnir.hooks.Hook`.

:func:`builtin_hooks` gives them in the order they run: those that run first
(before the app's own hooks) and those that run last (the limits, which may hold a
job back at its start, and the queue-wait metric, counted only for jobs that do
start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hooks import Hook
from .cancel import Cancellation
from .limits import Limits
from .monitoring import Heartbeats, Metrics, Purge
from .periodic import Periodic
from .tracing import Tracing
from .unique import UniqueKeys
from .workflow import Workflows

if TYPE_CHECKING:
    from ..loop import Worker

__all__ = ["builtin_hooks"]


def builtin_hooks(
    worker: Worker, *, heartbeat: float | None, scheduler: bool
) -> tuple[list[Hook], list[Hook]]:
    first: list[Hook] = [Tracing(), Cancellation(), Workflows(), UniqueKeys(worker), Purge()]
    if heartbeat:
        first.append(Heartbeats(worker, heartbeat))
    if scheduler:
        first.append(Periodic(worker))
    return first, [Limits(worker), Metrics(worker)]
