"""``sleipnir doctor``: is this deployment safe? Pass, warn or fail, each with its fix.

Two halves. The *checks* are pure functions from gathered facts to
:class:`Check` results, so tests feed them facts. The *gatherers* read the
real system: ``/proc/sys`` and ``/proc/stat``, the open-files limit, and the
timings given on the command line. The broker is its backend's matter: the
doctor asks the URL's backend to diagnose itself (``sleipnir.brokers.*_checks``,
which read the server's settings or the SQLite file), and knows no backend.
:func:`run_doctor` puts them together; this package re-exports every check,
the backends' included, under the names it always had.

What counts as a failure: a setting that loses or evicts accepted jobs or
stored results in ordinary operation (a broker restart, memory pressure), a
broker that cannot be reached, and timings that do not fit (a stop that cuts
running jobs, a lease that cannot be renewed in time). A warning is a setting
that loses work only on a host crash or power loss, a tuning below what a
busy host needs, or something that could not be checked.

The doctor reads and changes nothing; it never creates the SQLite file. (Opening
a broker of another kind prepares it as any producer would, for example the
schema of a PostgreSQL broker.)
"""

from __future__ import annotations

from ..brokers.amqp_checks import RABBITMQ_CONSUMER_TIMEOUT_S, RabbitFacts, check_rabbitmq
from ..brokers.redis_checks import RedisFacts, check_redis, read_redis
from ..brokers.sqlite_checks import SQLiteFacts, check_sqlite, filesystem_type, read_sqlite
from ..checks import Check, Status
from .broker import check_broker
from .host import (
    SYSCTLS,
    CpuTimes,
    KernelFacts,
    check_kernel,
    check_steal,
    read_cpu_times,
    read_kernel,
    read_sysctls,
    steal_percent,
)
from .report import failed, render_json, render_text
from .run import run_doctor
from .tasks import TaskFacts, check_tasks, task_facts
from .timings import TimingFacts, check_lease, check_stop, timing_facts

__all__ = [
    "RABBITMQ_CONSUMER_TIMEOUT_S",
    "SYSCTLS",
    "Check",
    "CpuTimes",
    "KernelFacts",
    "RabbitFacts",
    "RedisFacts",
    "SQLiteFacts",
    "Status",
    "TaskFacts",
    "TimingFacts",
    "check_broker",
    "check_kernel",
    "check_lease",
    "check_rabbitmq",
    "check_redis",
    "check_sqlite",
    "check_steal",
    "check_stop",
    "check_tasks",
    "failed",
    "filesystem_type",
    "read_cpu_times",
    "read_kernel",
    "read_redis",
    "read_sqlite",
    "read_sysctls",
    "render_json",
    "render_text",
    "run_doctor",
    "steal_percent",
    "task_facts",
    "timing_facts",
]
