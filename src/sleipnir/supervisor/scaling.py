"""How many worker processes to run, from the age of the oldest ready job. Pure.

The lag of a queue is ``now - oldest_ready_at``: how long its longest-waiting
ready job has waited. While the lag stays above ``up_lag`` the workers do not keep
up, and one process is added (at most every ``cooldown`` seconds, up to the
maximum). Once the lag has stayed under ``quiet_lag`` (or no job was ready) for
``down_after`` seconds, one process is retired (down to the minimum), and the
quiet period starts again. One step at a time: a new process takes a moment to
start, and the backlog needs a moment to show its effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["ScalePolicy", "ScaleState", "scale"]


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """When to add and retire processes (seconds)."""

    up_lag: float = 10.0
    """Add a process while the oldest ready job has waited longer than this."""
    quiet_lag: float = 1.0
    """A lag under this (or nothing ready) counts as quiet."""
    down_after: float = 60.0
    """Retire a process after this long quiet."""
    cooldown: float = 10.0
    """At least this long between two changes."""

    def __post_init__(self) -> None:
        for name in ("up_lag", "quiet_lag", "down_after", "cooldown"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ValueError(f"{name} must be finite and >= 0 seconds, not {value!r}")


@dataclass(frozen=True, slots=True)
class ScaleState:
    """What :func:`scale` remembers between calls."""

    changed_at: float = -math.inf
    quiet_since: float | None = None


def scale(
    current: int,
    minimum: int,
    maximum: int,
    lag: float | None,
    now: float,
    state: ScaleState,
    policy: ScalePolicy,
) -> tuple[int, ScaleState]:
    """The number of processes to run now, and the state for the next call.

    ``lag`` is the largest lag of the workers' queues, ``None`` when none has a
    ready job. ``current`` outside ``[minimum, maximum]`` is brought inside first.
    """
    if current < minimum:
        return minimum, replace(state, changed_at=now, quiet_since=None)
    if current > maximum:
        return maximum, replace(state, changed_at=now, quiet_since=None)
    quiet = lag is None or lag < policy.quiet_lag
    quiet_since = (state.quiet_since if state.quiet_since is not None else now) if quiet else None
    state = replace(state, quiet_since=quiet_since)
    if now - state.changed_at < policy.cooldown:
        return current, state
    if lag is not None and lag > policy.up_lag and current < maximum:
        return current + 1, ScaleState(changed_at=now, quiet_since=None)
    if quiet_since is not None and now - quiet_since >= policy.down_after and current > minimum:
        return current - 1, ScaleState(changed_at=now, quiet_since=now)
    return current, state
