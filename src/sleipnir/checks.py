"""What a diagnosis is made of: :class:`Check`, :class:`Status` and :class:`Deployment`.

Backends judge themselves (``Broker.diagnose``) and ``sleipnir doctor`` judges the
host and the timings; both speak in :class:`Check` results, defined here so that a
backend never imports the doctor. The worker's start-up warnings are the checks
that carry a :attr:`Check.warning` and did not pass (:func:`durability_warnings`),
so the report and the log come from the same rules and cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "Check",
    "Deployment",
    "Status",
    "durability_warnings",
    "format_size",
    "reported",
    "unreachable",
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
    warning: str | None = field(default=None, compare=False, repr=False)
    """The line the worker logs at start when this check does not pass: set on the
    checks of what a crash keeps (durability), ``None`` on all others."""

    def as_dict(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class Deployment:
    """What a backend's diagnosis may need to know of the deployment around it.

    The defaults are what a broker alone can assume (the worker's start-up check):
    its results kept beside it, the worker's usual renewal, no task timeouts known.
    """

    results_url: str | None = None
    """Where the app keeps its results; ``None``: unknown, taken to be the broker's server."""
    renew_every_s: float = 10.0
    longest_task_s: float | None = None
    """The longest task timeout; ``None`` when unknown or some task has none."""
    consumer_timeout_s: float | None = None
    """A server-side timeout the client cannot read (RabbitMQ's ``consumer_timeout``),
    as given on the command line; ``None``: the server's default."""
    startup: bool = False
    """The worker's start-up asks: only what decides whether accepted jobs survive a
    crash, and nothing that probes further (no queue redeclared)."""


def durability_warnings(checks: Iterable[Check]) -> list[str]:
    """The start-up warnings among ``checks``: those with a warning that did not pass."""
    return [
        c.warning
        for c in checks
        if c.warning is not None and c.status in (Status.WARN, Status.FAIL)
    ]


def format_size(n: int) -> str:
    """Bytes for people: ``512 B``, ``1.5 GiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def reported(shown_url: str, warnings: Iterable[str]) -> list[Check]:
    """The checks of a backend that reports warnings as sentences: reached, and each one.

    ``shown_url`` is the broker's URL as it may be shown (password redacted).
    """
    found = [
        Check("broker durability", Status.WARN, w, "see docs/deployment.md for the settings", w)
        for w in warnings
    ]
    if not found:
        found = [
            Check(
                "broker durability", Status.PASS, "the backend reports no setting that loses jobs"
            )
        ]
    return [Check("broker", Status.PASS, shown_url), *found]


def unreachable(shown_url: str, exc: BaseException) -> Check:
    """The one check of a backend whose server could not be reached or read."""
    return Check(
        "broker",
        Status.FAIL,
        f"{shown_url}: {exc}",
        "check the URL, that the server runs and that this host may reach it",
        f"could not check the broker's durability settings: {exc}",
    )
