"""``run_doctor``: every check in report order, CPU steal sampled while the others run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..brokers.amqp_checks import RABBITMQ_CONSUMER_TIMEOUT_S
from ..checks import Check
from .broker import check_broker
from .host import check_kernel, check_steal, read_cpu_times, read_kernel, steal_percent
from .tasks import check_tasks, task_facts
from .timings import check_lease, check_stop, timing_facts

if TYPE_CHECKING:
    from ..app import App

__all__ = ["run_doctor"]


def run_doctor(
    app: App,
    *,
    app_given: bool = True,
    lease_s: float | None = None,
    worker_stop_timeout_s: float = 30.0,
    supervisor_stop_timeout_s: float | None = None,
    steal_seconds: float = 3.0,
    consumer_timeout_s: float = RABBITMQ_CONSUMER_TIMEOUT_S,
    proc_sys: Path = Path("/proc/sys"),
    proc_stat: Path = Path("/proc/stat"),
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> list[Check]:
    """Every check, in report order. CPU steal is sampled while the others run."""
    started = monotonic()
    before = read_cpu_times(proc_stat) if steal_seconds > 0 else None
    checks = check_kernel(read_kernel(proc_sys))
    timings = timing_facts(
        app if app_given else None,
        lease_s=lease_s,
        worker_stop_timeout_s=worker_stop_timeout_s,
        supervisor_stop_timeout_s=supervisor_stop_timeout_s,
        default_lease_s=app.lease,
    )
    broker = check_broker(app, timings, consumer_timeout_s)
    percent = None
    if steal_seconds > 0:
        # A sampling window, not a wait for an event: steal is a rate over time.
        sleep(max(0.0, steal_seconds - (monotonic() - started)))
        after = read_cpu_times(proc_stat)
        if before is not None and after is not None:
            percent = steal_percent(before, after)
    checks.append(check_steal(percent, steal_seconds))
    checks += broker
    checks.append(check_lease(timings))
    checks += check_stop(timings)
    if app_given:
        checks += check_tasks(task_facts(app))
    return checks
