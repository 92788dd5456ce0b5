"""What the PostgreSQL backend says about itself: the server settings that lose commits.

:meth:`PostgresBroker.settings_report` reads ``fsync``, ``synchronous_commit`` and
``full_page_writes`` from ``pg_settings``; the rules here judge them. The worker logs
each warning at start and ``sleipnir doctor`` shows it as ``broker durability``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..checks import Check, Deployment, reported, unreachable
from ..errors import SleipnirError
from .base import Broker, redact_url

__all__ = ["SETTINGS", "diagnose", "judge"]

SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")
"""The ``pg_settings`` names the rules read."""


def judge(settings: Mapping[str, str | None]) -> list[str]:
    """What in these settings can lose accepted jobs, one sentence each."""
    warnings = []
    if settings.get("fsync") == "off":
        warnings.append(
            "PostgreSQL runs with fsync = off: a crash of its host can lose or corrupt "
            "accepted jobs. Set fsync = on."
        )
    if settings.get("synchronous_commit") == "off":
        warnings.append(
            "PostgreSQL runs with synchronous_commit = off: a server crash may lose the "
            "last few hundred milliseconds of accepted jobs. Set it to on to lose none."
        )
    if settings.get("full_page_writes") == "off":
        warnings.append(
            "PostgreSQL runs with full_page_writes = off: a power loss can corrupt pages. "
            "Set full_page_writes = on."
        )
    return warnings


def diagnose(open_broker: Callable[[], Broker], url: str, about: Deployment) -> list[Check]:
    """Reach the server, read its settings and judge them."""
    shown = redact_url(url)
    try:
        settings = open_broker().settings_report()
    except (SleipnirError, OSError) as exc:
        return [unreachable(shown, exc)]
    return reported(shown, judge(settings))
