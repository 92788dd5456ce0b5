"""``sleipnir doctor``: is this deployment safe? Pass, warn or fail, each with its fix.

Two halves. The *checks* are pure functions from gathered facts to
:class:`Check` results, so tests feed them facts. The *gatherers* read the
real system: ``/proc/sys`` and ``/proc/stat``, the open-files limit, the
broker's server (through :meth:`Broker.settings_report`) or the SQLite file
(read only, never created), and the timings given on the command line.
:func:`run_doctor` puts them together.

What counts as a failure: a setting that loses or evicts accepted jobs or
stored results in ordinary operation (a broker restart, memory pressure), a
broker that cannot be reached, and timings that do not fit (a stop that cuts
running jobs, a lease that cannot be renewed in time). A warning is a setting
that loses work only on a host crash or power loss, a tuning below what a
busy host needs, or something that could not be checked.

The module reads and changes nothing; it never creates the SQLite file. (Opening
a broker of another kind prepares it as any producer would, for example the
schema of a PostgreSQL broker.)
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import sqlite3
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .brokers.base import redact_url
from .errors import SleipnirError

if TYPE_CHECKING:
    from .app import App

__all__ = [
    "SYSCTLS",
    "Check",
    "CpuTimes",
    "KernelFacts",
    "RabbitFacts",
    "RedisFacts",
    "SQLiteFacts",
    "Status",
    "TimingFacts",
    "check_kernel",
    "check_lease",
    "check_rabbitmq",
    "check_redis",
    "check_sqlite",
    "check_steal",
    "check_stop",
    "render_json",
    "render_text",
    "run_doctor",
    "steal_percent",
]


class Status(StrEnum):
    """The verdict of one check."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"
    """Not checked, and why (a backend that has nothing to check here, an option not given)."""


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: what was checked, the verdict, what was found, the fix."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
        }


# -- kernel and process limits ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sysctl:
    """A kernel setting, the value a busy worker host wants, and why."""

    name: str
    recommended: int
    compare: str  # ">=", "<=" or "=="
    why: str

    @property
    def wanted(self) -> str:
        """The recommendation as text: ``>= 4096``, ``1``."""
        return (
            str(self.recommended) if self.compare == "==" else f"{self.compare} {self.recommended}"
        )

    def fits(self, value: int) -> bool:
        if self.compare == ">=":
            return value >= self.recommended
        if self.compare == "<=":
            return value <= self.recommended
        return value == self.recommended


SYSCTLS = (
    Sysctl(
        "fs.file-max",
        100_000,
        ">=",
        "open files of the whole host: every socket, pipe and file of every worker counts",
    ),
    Sysctl(
        "net.core.somaxconn",
        4096,
        ">=",
        "connections a listening socket queues before accept(): a web app answering a burst "
        "of uploads drops connections past it",
    ),
    Sysctl(
        "net.ipv4.tcp_tw_reuse",
        1,
        "==",
        "lets new outgoing connections reuse ports in TIME_WAIT (2 allows it on loopback "
        "only): hosts that open many short connections to a broker or service elsewhere run "
        "out of local ports without it",
    ),
    Sysctl(
        "net.ipv4.tcp_fin_timeout",
        15,
        "<=",
        "seconds a closed connection lingers in FIN-WAIT-2 holding its port",
    ),
)
"""The kernel settings worth setting on a worker host, with the values of the deployment guide."""

OPEN_FILES_RECOMMENDED = 65536


@dataclass(frozen=True, slots=True)
class KernelFacts:
    """Kernel settings as read (``None``: not readable) and this process's open-files limit."""

    sysctl: Mapping[str, int | None]
    nofile_soft: int
    nofile_hard: int


def check_kernel(facts: KernelFacts) -> list[Check]:
    """The sysctl settings against :data:`SYSCTLS`, and the open-files limit."""
    out = []
    for s in SYSCTLS:
        value = facts.sysctl.get(s.name)
        fix = (
            f"echo '{s.name} = {s.recommended}' >> /etc/sysctl.d/90-sleipnir.conf "
            "&& sysctl --system"
        )
        if value is None:
            out.append(Check(s.name, Status.WARN, "could not be read from /proc/sys", fix))
        elif s.fits(value):
            out.append(Check(s.name, Status.PASS, f"{value} (recommended {s.wanted})"))
        else:
            out.append(
                Check(
                    s.name,
                    Status.WARN,
                    f"{value}, recommended {s.wanted}: {s.why}",
                    fix,
                )
            )
    soft, hard = facts.nofile_soft, facts.nofile_hard
    shown = "unlimited" if soft >= 2**62 else str(soft)
    if soft >= OPEN_FILES_RECOMMENDED:
        out.append(Check("open files", Status.PASS, f"limit {shown} (>= {OPEN_FILES_RECOMMENDED})"))
    else:
        by_hand = (
            f"`ulimit -n {OPEN_FILES_RECOMMENDED}` before starting by hand"
            if hard >= OPEN_FILES_RECOMMENDED
            else f"`nofile {OPEN_FILES_RECOMMENDED}` in /etc/security/limits.conf for logins"
        )
        out.append(
            Check(
                "open files",
                Status.WARN,
                f"limit {soft} (hard {hard}), recommended >= {OPEN_FILES_RECOMMENDED}: a process "
                "past it fails to open sockets and files with EMFILE. This is the limit of this "
                "shell; a service's comes from its unit",
                f"LimitNOFILE={OPEN_FILES_RECOMMENDED} in the systemd unit, "
                f"minfds={OPEN_FILES_RECOMMENDED} in [supervisord], "
                f"{by_hand}",
            )
        )
    return out


# -- CPU steal ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """The host's CPU time from the ``cpu`` line of ``/proc/stat``, in clock ticks."""

    total: int
    steal: int


STEAL_FAIL_PERCENT = 10.0


def steal_percent(before: CpuTimes, after: CpuTimes) -> float | None:
    """Steal as a percentage of all CPU time between two samples (``vmstat``'s ``st``)."""
    total = after.total - before.total
    if total <= 0:
        return None
    return 100.0 * max(0, after.steal - before.steal) / total


def check_steal(percent: float | None, seconds: float) -> Check:
    """Any steal is CPU the host paid for and did not get; 10 % or more is a failure."""
    name = "cpu steal"
    if seconds <= 0:
        return Check(name, Status.SKIP, "not sampled (--steal-seconds 0)")
    if percent is None:
        return Check(name, Status.WARN, f"no CPU time counted in {seconds:g} s of /proc/stat")
    detail = f"{percent:.1f}% over {seconds:g} s (vmstat's st column)"
    if percent == 0:
        return Check(name, Status.PASS, detail)
    fix = (
        "move the workers to a host that is not oversold (dedicated vCPUs, KVM with pinned "
        "cores); watch `vmstat 1` there: st should stay at 0"
    )
    why = (
        ": the hypervisor gives this host's CPU to its neighbours, so jobs run slower, "
        "queues grow, and lease renewals may come late"
    )
    status = Status.FAIL if percent >= STEAL_FAIL_PERCENT else Status.WARN
    return Check(name, status, detail + why, fix)


# -- Redis --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisFacts:
    """A Redis server's settings (``None``: not readable) and where the results live."""

    appendonly: str | None
    appendfsync: str | None
    maxmemory_policy: str | None
    maxmemory: int | None
    role: str | None = "master"
    config_error: str | None = None
    """Why ``CONFIG GET`` was refused (managed services), or ``None``."""
    results_here: bool = True
    """Whether the App's result store is this same server."""


_REDIS_CONF = "in redis.conf (live: CONFIG SET {0} {1}, then CONFIG REWRITE to keep it)"


def _redis_fix(name: str, value: str) -> str:
    return f"`{name} {value}` " + _REDIS_CONF.format(name, value)


def _unread(name: str, facts: RedisFacts) -> Check:
    why = (
        f"CONFIG GET is refused ({facts.config_error}), as on most managed Redis services"
        if facts.config_error
        else "the server did not report it"
    )
    return Check(
        f"redis {name}",
        Status.WARN,
        f"could not be checked: {why}",
        f"check {name} in the service's settings; see docs/redis.md for the values",
    )


def check_redis(facts: RedisFacts) -> list[Check]:
    """Persistence, eviction and role of the Redis server that holds the jobs."""
    out = []
    if facts.role is not None and facts.role not in ("master", "primary"):
        out.append(
            Check(
                "redis role",
                Status.FAIL,
                f"this server is a {facts.role}: it refuses writes (READONLY), so no job can "
                "be enqueued or settled",
                "point the broker URL at the primary (or at an address that follows failover)",
            )
        )
    if facts.appendonly is None:
        out.append(_unread("appendonly", facts))
    elif facts.appendonly == "yes":
        out.append(Check("redis appendonly", Status.PASS, "yes: every write goes to the AOF"))
    else:
        out.append(
            Check(
                "redis appendonly",
                Status.FAIL,
                f"{facts.appendonly}: a restart of redis-server (crash, OOM kill, upgrade) loses "
                "every job accepted since the last snapshot",
                _redis_fix("appendonly", "yes"),
            )
        )
    out.append(_check_appendfsync(facts))
    out.append(_check_policy(facts))
    out.append(_check_maxmemory(facts))
    return out


def _check_appendfsync(facts: RedisFacts) -> Check:
    name = "redis appendfsync"
    fsync = facts.appendfsync
    if fsync is None:
        return _unread("appendfsync", facts)
    if facts.appendonly == "no":
        return Check(name, Status.SKIP, f"{fsync}: not in effect without the append-only file")
    if fsync == "always":
        return Check(name, Status.PASS, "always: a job is on disk before enqueue returns")
    loss = "about the last second" if fsync == "everysec" else "up to about 30 s (the OS decides)"
    return Check(
        name,
        Status.WARN,
        f"{fsync}: a kill of redis-server loses nothing, but a crash or power loss of the "
        f"Redis host loses {loss} of accepted jobs",
        _redis_fix("appendfsync", "always") + " when no accepted job may be lost",
    )


def _check_policy(facts: RedisFacts) -> Check:
    name = "redis maxmemory-policy"
    policy = facts.maxmemory_policy
    if policy is None:
        return _unread("maxmemory-policy", facts)
    fix = _redis_fix("maxmemory-policy", "noeviction")
    if policy == "noeviction":
        return Check(
            name, Status.PASS, "noeviction: a full Redis refuses new jobs with an error instead"
        )
    limit_off = facts.maxmemory == 0
    idle = " Not in effect while maxmemory is 0, but it would be once a limit is set." * limit_off
    if policy.startswith("allkeys"):
        return Check(
            name,
            Status.WARN if limit_off else Status.FAIL,
            f"{policy}: under memory pressure Redis evicts any key: waiting jobs "
            "(sleipnir:job:<id>), whole queues and their leases (sleipnir:ready:<q>, "
            f"sleipnir:lease:<q>) disappear without a trace.{idle}",
            fix,
        )
    if policy.startswith("volatile"):
        # Only result hashes carry an expiry (PEXPIREAT in result_put.lua); job hashes,
        # queues and leases (sorted-set scores, not key TTLs) have none.
        what = (
            "Of Sleipnir's keys only the stored results (sleipnir:result:<id>) carry an "
            "expiry; jobs, queues and leases carry none and are never evicted. "
        )
        if facts.results_here:
            return Check(
                name,
                Status.WARN if limit_off else Status.FAIL,
                f"{policy}: under memory pressure Redis evicts keys with an expiry. {what}"
                "Outcomes then vanish before their result_ttl: job.result() waits in vain "
                f"and status() says 'unknown'.{idle}",
                fix,
            )
        return Check(
            name,
            Status.WARN,
            f"{policy}: evicts only keys with an expiry. {what}The results are stored "
            "elsewhere, so nothing of Sleipnir's here can be evicted; when no key with an "
            "expiry is left Redis refuses writes, as with noeviction.",
            fix,
        )
    return Check(name, Status.FAIL, f"{policy}: an eviction policy Sleipnir does not know", fix)


def _check_maxmemory(facts: RedisFacts) -> Check:
    name = "redis maxmemory"
    if facts.maxmemory is None:
        return _unread("maxmemory", facts)
    if facts.maxmemory > 0:
        return Check(
            name,
            Status.PASS,
            f"{_size(facts.maxmemory)}: keep it above the worst backlog, the dead letters and "
            "result_ttl worth of results",
        )
    return Check(
        name,
        Status.WARN,
        "0 (no limit): Redis grows until the kernel's OOM killer stops it, and the queue is "
        "down until it is restarted",
        "`maxmemory 2gb` (below the host's RAM, sized for the backlog) with "
        "`maxmemory-policy noeviction` " + _REDIS_CONF.format("maxmemory", "2gb"),
    )


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# -- SQLite ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SQLiteFacts:
    """The SQLite file and what lies beneath it."""

    path: Path
    exists: bool
    journal_mode: str | None
    """As read from the file; ``None`` when it does not exist or cannot be read."""
    synchronous: str
    """The level every connection sets, from the URL's ``?sync=``: NORMAL or FULL."""
    free_bytes: int | None
    fs_type: str | None


DISK_FAIL_BYTES = 512 * 2**20
DISK_WARN_BYTES = 2 * 2**30

NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "glusterfs", "ceph", "lustre"}
)
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def check_sqlite(facts: SQLiteFacts) -> list[Check]:
    """The file's filesystem, journal mode, sync level and free disk."""
    out = []
    where = f"{facts.path}"
    move = "put the file on a local disk that persists: sqlite:///var/lib/<app>/jobs.db"
    fs = facts.fs_type
    if fs is None:
        out.append(Check("sqlite filesystem", Status.WARN, f"unknown for {where}"))
    elif fs in MEMORY_FILESYSTEMS:
        out.append(
            Check(
                "sqlite filesystem",
                Status.FAIL,
                f"{fs}: {where} lives in memory, and a reboot loses every job",
                move,
            )
        )
    elif fs in NETWORK_FILESYSTEMS or fs.startswith("fuse."):
        out.append(
            Check(
                "sqlite filesystem",
                Status.FAIL,
                f"{fs}: a network filesystem; SQLite's locks and WAL shared memory do not hold "
                "across hosts, so two workers may take the same job or corrupt the file",
                move + "; for workers on several hosts use Redis or RabbitMQ",
            )
        )
    elif fs == "overlay":
        out.append(
            Check(
                "sqlite filesystem",
                Status.WARN,
                f"overlay: {where} is in a container's writable layer, gone with the container",
                "mount a volume for the file's directory",
            )
        )
    else:
        out.append(Check("sqlite filesystem", Status.PASS, f"{fs}: {where}"))

    if not facts.exists:
        out.append(
            Check(
                "sqlite journal",
                Status.WARN,
                f"{where} does not exist yet: the first producer or worker creates it in WAL mode",
                "check that producers and workers use this same URL",
            )
        )
    elif facts.journal_mode == "wal":
        out.append(Check("sqlite journal", Status.PASS, "wal: readers never block the writer"))
    else:
        out.append(
            Check(
                "sqlite journal",
                Status.WARN,
                f"{facts.journal_mode or 'unreadable'}: not WAL, so no Sleipnir process has "
                "opened the file yet, or WAL could not be set",
                "start a worker on it (it switches the file to WAL) and run doctor again",
            )
        )

    if facts.synchronous == "FULL":
        out.append(Check("sqlite synchronous", Status.PASS, "FULL: every commit is fsynced"))
    else:
        out.append(
            Check(
                "sqlite synchronous",
                Status.WARN,
                f"{facts.synchronous}: a killed process loses nothing, but a power loss or "
                "kernel crash may lose the last commits",
                "add ?sync=full to the broker URL when no accepted job may be lost",
            )
        )

    free = facts.free_bytes
    if free is None:
        out.append(Check("sqlite disk", Status.WARN, "free space beside the file unknown"))
    elif free < DISK_WARN_BYTES:
        out.append(
            Check(
                "sqlite disk",
                Status.FAIL if free < DISK_FAIL_BYTES else Status.WARN,
                f"{_size(free)} free beside the file: when it fills, enqueue fails and workers "
                "cannot settle",
                "free space or move the file to a larger disk; dead letters and results "
                "(result_ttl) grow it",
            )
        )
    else:
        out.append(Check("sqlite disk", Status.PASS, f"{_size(free)} free beside the file"))
    return out


# -- RabbitMQ ------------------------------------------------------------------------

RABBITMQ_CONSUMER_TIMEOUT_S = 1800.0
"""RabbitMQ's default ``consumer_timeout`` (30 minutes)."""


@dataclass(frozen=True, slots=True)
class RabbitFacts:
    """A RabbitMQ broker's settings, as far as a client can know them."""

    queue_type: str
    """``classic`` or ``quorum`` (the URL's ``?queue_type=``)."""
    park_after_s: float
    """Jobs held longer are parked (acked, tracked apart); ``?park_after=``."""
    consumer_timeout_s: float
    """The server's ``consumer_timeout`` (rabbitmq.conf), as given: AMQP cannot read it."""
    renew_every_s: float
    longest_task_s: float | None
    """The longest task timeout; ``None`` when unknown or some task has none."""
    queues_error: str | None = None
    """Why redeclaring the queues that held jobs failed (a queue declared otherwise)."""
    queues: int = 0


def check_rabbitmq(facts: RabbitFacts) -> list[Check]:
    """Durable (quorum) queues, and no delivery held past the consumer timeout."""
    out = []
    if facts.queues_error is not None:
        out.append(
            Check(
                "rabbitmq queues",
                Status.FAIL,
                facts.queues_error,
                "delete the queue (its jobs first moved elsewhere) so the workers declare it "
                "durable again, or fix queue_type in the URL",
            )
        )
    elif facts.queue_type == "quorum":
        out.append(
            Check(
                "rabbitmq queues",
                Status.PASS,
                f"quorum, durable ({facts.queues} queues with jobs so far): persistent messages, "
                "publisher confirms, replicated to a majority of the nodes",
            )
        )
    else:
        out.append(
            Check(
                "rabbitmq queues",
                Status.WARN,
                f"{facts.queue_type}, durable ({facts.queues} queues with jobs so far): persistent "
                "messages survive a restart, but each queue lives on one node, and its jobs "
                "are out of reach while that node is down",
                "?queue_type=quorum in the broker URL on a cluster (new queue names, or drain "
                "and delete the classic ones first)",
            )
        )
    timeout = facts.consumer_timeout_s
    held = facts.park_after_s + facts.renew_every_s  # parking happens at a renewal
    longest = facts.longest_task_s
    name = "rabbitmq consumer_timeout"
    if held < timeout:
        out.append(
            Check(
                name,
                Status.PASS,
                f"{timeout:g} s: jobs held longer than park_after ({facts.park_after_s:g} s) are "
                "parked before it, so tasks may run longer",
            )
        )
    elif longest is not None and longest + facts.renew_every_s < timeout:
        out.append(
            Check(
                name,
                Status.PASS,
                f"{timeout:g} s: above the longest task timeout ({longest:g} s); parking "
                f"(park_after {facts.park_after_s:g} s) would come too late",
            )
        )
    else:
        runs = "a task without a timeout" if longest is None else f"a task of {longest:g} s"
        out.append(
            Check(
                name,
                Status.FAIL,
                f"{timeout:g} s, and {runs} is held unacked past it (park_after "
                f"{facts.park_after_s:g} s comes too late): RabbitMQ closes the worker's channel "
                "and delivers the job again while it still runs",
                f"?park_after={max(60.0, timeout / 2):g} in the broker URL, or a higher "
                "consumer_timeout (milliseconds) in rabbitmq.conf; give --consumer-timeout "
                "if yours is not the default",
            )
        )
    return out


# -- timings ------------------------------------------------------------------------

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


# -- what the app's tasks need ----------------------------------------------------------

LOCAL_RESULT_SCHEMES = ("sqlite", "memory")
DISTRIBUTED_BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "postgresql", "postgres")


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """What the app's tasks use that depends on the result store or on the worker."""

    broker_scheme: str
    results_scheme: str
    results_url: str
    shared_by: Sequence[str]
    """Tasks whose options need state shared between hosts: "send_mail (rate_limit)"."""
    unenforced_limits: Sequence[str]
    """Sync tasks with a ``timeout`` and no ``ctx``: a limit the worker cannot enforce."""


def check_tasks(facts: TaskFacts) -> list[Check]:
    """Limits, keys and ticks shared by every host; time limits the worker can keep."""
    out = []
    local = facts.results_scheme in LOCAL_RESULT_SCHEMES
    if facts.broker_scheme in DISTRIBUTED_BROKER_SCHEMES and local:
        uses = ", ".join(facts.shared_by) if facts.shared_by else "no task option, but cancel"
        out.append(
            Check(
                "shared state",
                Status.WARN,
                f"the broker reaches many hosts but the result store ({facts.results_url}) is "
                "local to this one: rate and concurrency limits, unique keys, periodic ticks "
                f"and cancel requests hold per host ({uses}); right on one host only",
                "give every process the same results= on a shared server: "
                'App(broker=..., results="redis://..." or "postgresql://...")',
            )
        )
    else:
        where = "the broker's server" if not local else "one file on this host"
        out.append(
            Check(
                "shared state",
                Status.PASS,
                f"limits, keys, periodic ticks and cancel requests live in {where}",
            )
        )
    if facts.unenforced_limits:
        out.append(
            Check(
                "time limits",
                Status.WARN,
                f"not enforced for the sync tasks {', '.join(facts.unenforced_limits)}: a thread "
                "cannot be stopped, so a run over its timeout goes on",
                "take a ctx first parameter and call ctx.progress() or ctx.check_cancelled() "
                "in the task's loop (it then stops at its limit), isolate=True (a process "
                "of its own, killed at the limit), or make it async def",
            )
        )
    return out


def task_facts(app: App) -> TaskFacts:
    """The facts :func:`check_tasks` judges, read from the app's registry (no I/O)."""
    shared = []
    for name, task in sorted(app.tasks.items()):
        o = task.options
        uses = [
            label
            for label, on in (
                ("rate_limit", o.rate_limit is not None),
                ("concurrency", o.concurrency is not None),
                ("unique_for", o.unique_for is not None),
                ("schedule", name in app.schedules),
            )
            if on
        ]
        if uses:
            shared.append(f"{name} ({', '.join(uses)})")
    return TaskFacts(
        broker_scheme=urlsplit(app.broker_url).scheme,
        results_scheme=urlsplit(app.results_url).scheme,
        results_url=redact_url(app.results_url),
        shared_by=shared,
        unenforced_limits=sorted(
            name
            for name, t in app.tasks.items()
            if t.options.timeout
            and not t.is_async
            and not t.options.isolate
            and not t.takes_context
        ),
    )


# -- gatherers -----------------------------------------------------------------------


def read_sysctls(root: Path = Path("/proc/sys")) -> dict[str, int | None]:
    """The :data:`SYSCTLS` values from ``/proc/sys``; ``None`` where unreadable."""
    out: dict[str, int | None] = {}
    for s in SYSCTLS:
        try:
            out[s.name] = int((root / s.name.replace(".", "/")).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            out[s.name] = None
    return out


def read_kernel(root: Path = Path("/proc/sys")) -> KernelFacts:
    """Sysctls and this process's open-files limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = 2**63 - 1
    return KernelFacts(
        read_sysctls(root),
        inf if soft == resource.RLIM_INFINITY else soft,
        inf if hard == resource.RLIM_INFINITY else hard,
    )


def read_cpu_times(path: Path = Path("/proc/stat")) -> CpuTimes | None:
    """The ``cpu`` line: user nice system idle iowait irq softirq steal (guest is in user)."""
    try:
        with path.open() as f:
            for line in f:
                if line.startswith("cpu "):
                    fields = [int(x) for x in line.split()[1:9]]
                    return CpuTimes(total=sum(fields), steal=fields[7] if len(fields) > 7 else 0)
    except (OSError, ValueError):
        return None
    return None


def filesystem_type(path: Path, mounts: Path = Path("/proc/self/mounts")) -> str | None:
    """The type of the filesystem holding ``path`` (its longest mount point prefix)."""
    target = str(path.resolve())
    best, kind = "", None
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def read_sqlite(url: str, mounts: Path = Path("/proc/self/mounts")) -> SQLiteFacts:
    """The SQLite file's facts, read without creating it."""
    from .brokers.sqlite import parse_sqlite_url

    path, synchronous, _ = parse_sqlite_url(url)
    path = path.absolute()
    exists = path.exists()
    journal = None
    if exists:
        # Read only: doctor must not create the schema in someone else's file.
        with contextlib.suppress(sqlite3.Error):
            uri = f"{path.resolve().as_uri()}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as conn:
                journal = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    here = path.parent
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        free: int | None = shutil.disk_usage(here).free
    except OSError:
        free = None
    return SQLiteFacts(path, exists, journal, synchronous, free, filesystem_type(here, mounts))


def read_redis(settings: Mapping[str, str | None], results_here: bool) -> RedisFacts:
    """:class:`RedisFacts` from :meth:`RedisBroker.settings_report`."""
    maxmemory = settings.get("maxmemory")
    return RedisFacts(
        appendonly=settings.get("appendonly"),
        appendfsync=settings.get("appendfsync"),
        maxmemory_policy=settings.get("maxmemory-policy"),
        maxmemory=int(maxmemory) if maxmemory is not None and maxmemory.isdigit() else None,
        role=settings.get("role"),
        config_error=settings.get("config-error"),
        results_here=results_here,
    )


def _same_server(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.hostname, pa.port, pa.path or "/0") == (pb.hostname, pb.port, pb.path or "/0")


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


def check_broker(
    app: App,
    timings: TimingFacts | None = None,
    consumer_timeout_s: float = RABBITMQ_CONSUMER_TIMEOUT_S,
) -> list[Check]:
    """The broker's durability, by backend; connects to Redis, reads SQLite files."""
    url = app.broker_url
    scheme = urlsplit(url).scheme
    shown = redact_url(url)
    if scheme == "memory":
        return [
            Check(
                "broker",
                Status.FAIL,
                "memory:// keeps jobs in one process's memory: other processes never see them "
                "and they are lost when it exits",
                "SLEIPNIR_BROKER=sqlite:///var/lib/<app>/jobs.db (one host) or redis://... "
                "(several hosts)",
            )
        ]
    if scheme == "sqlite":
        try:
            facts = read_sqlite(url)
        except SleipnirError as exc:
            return [Check("broker", Status.FAIL, f"{shown}: {exc}", "fix the broker URL")]
        return [Check("broker", Status.PASS, f"{shown}"), *check_sqlite(facts)]
    if scheme in ("redis", "rediss", "unix"):
        try:
            settings = app.broker.settings_report()
        except SleipnirError as exc:
            return [
                Check(
                    "broker",
                    Status.FAIL,
                    f"{exc}",
                    "check the URL, that Redis runs and that this host may reach it",
                )
            ]
        here = _same_server(app.results_url, url) and urlsplit(app.results_url).scheme == scheme
        return [Check("broker", Status.PASS, f"{shown}"), *check_redis(read_redis(settings, here))]
    if scheme in ("amqp", "amqps"):
        return _check_amqp(app, shown, timings, consumer_timeout_s)
    return _check_other_broker(app, shown)


def _longest_task(timings: TimingFacts | None) -> float | None:
    """The longest task timeout, or ``None`` when unknown or some task has none."""
    if timings is None or not timings.task_timeouts:
        return None
    values = list(timings.task_timeouts.values())
    if any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


def _check_amqp(
    app: App, shown: str, timings: TimingFacts | None, consumer_timeout_s: float
) -> list[Check]:
    """Reach RabbitMQ and redeclare the queues that held jobs, as ``stats()`` does."""
    from .brokers.amqp_link import parse_url
    from .errors import BrokerConnectionError

    fix = "check the URL, that RabbitMQ runs and that this host may reach it"
    try:
        _, options = parse_url(app.broker_url)
        # stats() declares every queue that ever held a job with the backend's
        # arguments (durable, queue type); RabbitMQ refuses one declared otherwise.
        queues = len(app.broker.stats())
        error = None
    except BrokerConnectionError as exc:
        return [Check("broker", Status.FAIL, f"{exc}", fix)]
    except SleipnirError as exc:
        if "exists with other arguments" not in str(exc):
            return [Check("broker", Status.FAIL, f"{exc}", fix)]
        queues, error = 0, str(exc)
    facts = RabbitFacts(
        queue_type=options.queue_type,
        park_after_s=options.park_after,
        consumer_timeout_s=consumer_timeout_s,
        renew_every_s=timings.renew_every_s if timings is not None else 10.0,
        longest_task_s=_longest_task(timings),
        queues_error=error,
        queues=queues,
    )
    return [Check("broker", Status.PASS, shown), *check_rabbitmq(facts)]


def _check_other_broker(app: App, shown: str) -> list[Check]:
    """Backends without checks of their own here: what the backend itself warns about."""
    try:
        warnings = app.broker.durability_warnings()
    except (SleipnirError, OSError) as exc:
        return [
            Check(
                "broker",
                Status.FAIL,
                f"{shown}: {exc}",
                "check the URL, that the server runs and that this host may reach it",
            )
        ]
    out = [Check("broker", Status.PASS, shown)]
    out += [
        Check("broker durability", Status.WARN, w, "see docs/deployment.md for the settings")
        for w in warnings
    ] or [Check("broker durability", Status.PASS, "the backend reports no setting that loses jobs")]
    return out


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


# -- output ----------------------------------------------------------------------------


def failed(checks: Iterable[Check]) -> bool:
    """Whether any check failed (the command's exit status is then 1)."""
    return any(c.status is Status.FAIL for c in checks)


def _counts(checks: Sequence[Check]) -> dict[str, int]:
    return {s.value: sum(1 for c in checks if c.status is s) for s in Status}


def render_text(checks: Sequence[Check], header: str = "", columns: int = 100) -> str:
    """One line per check, ``fix:`` beneath the ones that need one, counts at the end."""
    width = max((len(c.name) for c in checks), default=0) + 2
    indent = " " * (6 + width)
    lines = [header] if header else []
    for c in checks:
        lines += textwrap.wrap(
            c.detail,
            columns,
            initial_indent=f"{c.status.value.upper():<6}{c.name:<{width}}",
            subsequent_indent=indent,
            break_on_hyphens=False,
        )
        if c.fix and c.status in (Status.WARN, Status.FAIL):
            lines += textwrap.wrap(
                f"fix: {c.fix}",
                columns,
                initial_indent=indent,
                subsequent_indent=indent + "     ",
                break_on_hyphens=False,
            )
    n = _counts(checks)
    lines.append(
        f"{n['pass']} passed, {n['warn']} warnings, {n['fail']} failed, {n['skip']} skipped"
    )
    return "\n".join(lines)


def render_json(checks: Sequence[Check], **about: object) -> str:
    """The report as one JSON object: ``ok``, ``counts``, ``checks`` and what was checked."""
    return json.dumps(
        {
            **about,
            "ok": not failed(checks),
            "counts": _counts(checks),
            "checks": [c.as_dict() for c in checks],
        },
        indent=2,
    )
