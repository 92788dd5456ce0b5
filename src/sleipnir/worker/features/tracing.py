"""OpenTelemetry (:mod:`sleipnir.tracing`), as a hook: each run is a CONSUMER span, the
child of the span that enqueued the job, current while the task runs. Nothing is set
up while tracing is off."""

from __future__ import annotations

import contextlib
from typing import Any

from ... import tracing
from ...hooks import Hook
from ..held import JobRun, Outcome

__all__ = ["Tracing"]

SPAN = "sleipnir.span"


class Tracing(Hook):
    def before_run(self, job: JobRun) -> None:
        if not tracing.active():
            return
        span: contextlib.AbstractContextManager[Any] = tracing.process_span(
            job.task, job.queue, job.id, job.attempt, job.headers
        )
        span.__enter__()
        job.extras[SPAN] = span

    def after_run(self, job: JobRun, outcome: Outcome) -> None:
        span = job.extras.pop(SPAN, None)
        if span is None:
            return
        exc = outcome.exception
        if exc is None:
            span.__exit__(None, None, None)
        else:
            span.__exit__(type(exc), exc, exc.__traceback__)
