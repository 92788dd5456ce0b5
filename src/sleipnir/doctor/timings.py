"""The deployment's timings: the lease against its renewals, and the stop timeouts.

A lease must outlast a late renewal yet bring a dead worker's jobs back soon; the
longest task must fit in the worker's stop timeout, and that in the supervisor's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..checks import Check, Status

if TYPE_CHECKING:
    from ..app import App

__all__ = [
    "LEASE_MARGIN_MIN_S",
    "LEASE_MAX_S",
    "RENEWALS_PER_LEASE",
    "STOP_GRACE_S",
    "TimingFacts",
    "check_lease",
    "check_stop",
    "longest_task",
    "timing_facts",
]


RENEWALS_PER_LEASE = 3
"""The worker renews each lease every lease/3 (``worker.py``)."""

LEASE_MARGIN_MIN_S = 10.0
LEASE_MAX_S = 600.0
STOP_GRACE_S = 10.0
"""Seconds after the worker's stop timeout for it to give jobs back, settle and exit
(``sleipnir run`` waits as long before it kills a worker)."""


def _supervisor_for(worker_stop_timeout_s: float) -> float:
    """The supervisor stop timeout to recommend: the worker's, its grace, and 5 s to spare."""
    return worker_stop_timeout_s + STOP_GRACE_S + 5.0


@dataclass(frozen=True, slots=True)
class TimingFacts:
    """The timings of one deployment, in seconds."""

    lease_s: float
    renew_every_s: float
    worker_stop_timeout_s: float
    supervisor_stop_timeout_s: float | None
    """systemd ``TimeoutStopSec=``, supervisord ``stopwaitsecs``; ``None``: not given."""
    task_timeouts: Mapping[str, float | None] | None
    """Each task's ``timeout`` (``None``: none set); ``None`` when no app was given."""


def check_lease(facts: TimingFacts) -> Check:
    """The lease must outlast a late renewal, yet bring a dead worker's jobs back soon."""
    lease, every = facts.lease_s, facts.renew_every_s
    margin = lease - every
    detail = f"lease {lease:g} s, renewed every {every:g} s"
    fix = "a lease of 30 s or more: App(lease=30), SLEIPNIR_LEASE=30 or `worker --lease 30`"
    if margin <= 0:
        return Check(
            "lease", Status.FAIL, f"{detail}: it runs out before it is renewed: jobs run twice", fix
        )
    if margin < LEASE_MARGIN_MIN_S:
        return Check(
            "lease",
            Status.WARN,
            f"{detail}: a stall longer than {margin:g} s (a paused VM, a broker failover, "
            "clocks apart between hosts) lets the lease run out while the job runs, and it "
            "runs twice",
            fix,
        )
    if lease > LEASE_MAX_S:
        return Check(
            "lease",
            Status.WARN,
            f"{detail}: the jobs of a worker that died wait {lease:g} s before they run again",
            "a lease of a few minutes at most; the worker renews it while a job runs",
        )
    return Check("lease", Status.PASS, f"{detail}: {margin:g} s of slack for a late renewal")


def check_stop(facts: TimingFacts) -> list[Check]:
    """Longest task timeout <= worker stop timeout < supervisor stop timeout."""
    out = []
    worker_s = facts.worker_stop_timeout_s
    timeouts = facts.task_timeouts
    if timeouts is None:
        out.append(
            Check("task timeouts", Status.SKIP, "no APP given: sleipnir doctor myproj.tasks:app")
        )
    elif not timeouts:
        out.append(Check("task timeouts", Status.SKIP, "the app has no tasks"))
    else:
        unbounded = sorted(name for name, t in timeouts.items() if t is None)
        bounded = {name: t for name, t in timeouts.items() if t is not None}
        if bounded:
            longest = max(bounded, key=lambda n: bounded[n])
            longest_s = bounded[longest]
            if longest_s > worker_s:
                out.append(
                    Check(
                        "task timeouts",
                        Status.FAIL,
                        f"task {longest!r} may run {longest_s:g} s, longer than the worker's "
                        f"stop timeout ({worker_s:g} s): every stop (a deploy, a scale-down) "
                        "gives such jobs back mid-run and they start over",
                        f"`sleipnir worker --stop-timeout {longest_s:g}` and a supervisor stop "
                        f"timeout above it ({_supervisor_for(longest_s):g} s)",
                    )
                )
            else:
                out.append(
                    Check(
                        "task timeouts",
                        Status.PASS,
                        f"longest: {longest!r}, {longest_s:g} s, within the worker's stop "
                        f"timeout ({worker_s:g} s)",
                    )
                )
        if unbounded:
            out.append(
                Check(
                    "task timeouts",
                    Status.WARN,
                    f"no timeout on {', '.join(unbounded)}: nothing bounds how long a stop "
                    "must wait for them",
                    "@app.task(timeout=...) with the longest a run may take",
                )
            )
    sup = facts.supervisor_stop_timeout_s
    if sup is None:
        out.append(
            Check(
                "stop timeout",
                Status.SKIP,
                "give the supervisor's stop timeout (systemd TimeoutStopSec=, supervisord "
                "stopwaitsecs=) with --stop-timeout to check it",
            )
        )
        return out
    fix = (
        f"TimeoutStopSec={_supervisor_for(worker_s):g} (systemd) or "
        f"stopwaitsecs={_supervisor_for(worker_s):g} (supervisord)"
    )
    if sup <= worker_s:
        out.append(
            Check(
                "stop timeout",
                Status.FAIL,
                f"the supervisor kills the worker {sup:g} s after SIGTERM, before its own stop "
                f"timeout ({worker_s:g} s) is over: running jobs are cut and come back only "
                "when their leases run out",
                fix,
            )
        )
    elif sup < worker_s + STOP_GRACE_S:
        out.append(
            Check(
                "stop timeout",
                Status.WARN,
                f"{sup:g} s leaves the worker less than {STOP_GRACE_S:g} s after its stop "
                f"timeout ({worker_s:g} s) to give jobs back, settle and exit",
                fix,
            )
        )
    else:
        out.append(
            Check(
                "stop timeout",
                Status.PASS,
                f"supervisor {sup:g} s > worker {worker_s:g} s + {STOP_GRACE_S:g} s",
            )
        )
    return out


def timing_facts(
    app: App | None,
    *,
    lease_s: float | None,
    worker_stop_timeout_s: float,
    supervisor_stop_timeout_s: float | None,
    default_lease_s: float,
) -> TimingFacts:
    """The timings from the app's tasks and the options given."""
    lease = default_lease_s if lease_s is None else lease_s
    return TimingFacts(
        lease_s=lease,
        renew_every_s=lease / RENEWALS_PER_LEASE,
        worker_stop_timeout_s=worker_stop_timeout_s,
        supervisor_stop_timeout_s=supervisor_stop_timeout_s,
        task_timeouts=None
        if app is None
        else {name: task.options.timeout for name, task in sorted(app.tasks.items())},
    )


def longest_task(timings: TimingFacts | None) -> float | None:
    """The longest task timeout, or ``None`` when unknown or some task has none."""
    if timings is None or not timings.task_timeouts:
        return None
    values = list(timings.task_timeouts.values())
    if any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)
