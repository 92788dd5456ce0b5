"""What the app's tasks need: state shared by every host, and time limits the worker keeps.

Rate and concurrency limits, unique keys, periodic ticks and cancel requests live in
the result store; with workers on many hosts it must be one server they all reach.
Whether a URL's server spans hosts is the backend registry's word
(:data:`sleipnir.brokers.BACKENDS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..brokers import find_backend
from ..brokers.base import redact_url
from ..checks import Check, Status

if TYPE_CHECKING:
    from ..app import App

__all__ = ["TaskFacts", "check_tasks", "task_facts"]


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """What the app's tasks use that depends on the result store or on the worker."""

    broker_spans_hosts: bool
    """Whether workers on many hosts may share the broker (its backend's ``spans_hosts``)."""
    results_local: bool
    """Whether the result store is seen from this host only (a file, one process's memory)."""
    results_url: str
    shared_by: Sequence[str]
    """Tasks whose options need state shared between hosts: "send_mail (rate_limit)"."""
    unenforced_limits: Sequence[str]
    """Sync tasks with a ``timeout`` and no ``ctx``: a limit the worker cannot enforce."""


def check_tasks(facts: TaskFacts) -> list[Check]:
    """Limits, keys and ticks shared by every host; time limits the worker can keep."""
    out = []
    local = facts.results_local
    if facts.broker_spans_hosts and local:
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
    broker, results = find_backend(app.broker_url), find_backend(app.results_url)
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
        broker_spans_hosts=broker is not None and broker.spans_hosts,
        results_local=results is not None and not results.spans_hosts,
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
