"""The host's checks: kernel settings, the open-files limit and CPU steal.

Pure checks over :class:`KernelFacts` and :class:`CpuTimes`, and the gatherers that
read them from ``/proc/sys``, ``/proc/stat`` and this process's limits.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..checks import Check, Status

__all__ = [
    "OPEN_FILES_RECOMMENDED",
    "STEAL_FAIL_PERCENT",
    "SYSCTLS",
    "CpuTimes",
    "KernelFacts",
    "Sysctl",
    "check_kernel",
    "check_steal",
    "read_cpu_times",
    "read_kernel",
    "read_sysctls",
    "steal_percent",
]


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
