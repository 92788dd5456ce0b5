"""What a running job sees of itself: the :class:`Context`, progress and cancellation.

A task that takes a first parameter named ``ctx`` (or annotated :class:`Context`)
gets one from the worker; callers never pass it::

    @app.task
    def report(ctx: Context, month: str) -> str:
        for i, part in enumerate(parts, 1):
            ...
            ctx.progress(i, len(parts))     # job.progress() -> (i, len(parts))
        return path

Progress and cancel requests are small keys in the result store, beside the
claimed keys (:meth:`ResultStore.set_key`), so they work on every backend:

* ``progress:<job id>`` holds ``[done, total]`` as JSON;
* ``cancel:<job id>`` marks a job whose cancellation was asked for. A worker
  checks the marks of the jobs it reserves (a cancelled job is acked without
  running) and, about once a second, of the jobs it runs: an ``async def`` task
  is cancelled at its next ``await``; a sync task cannot be interrupted safely,
  so it is told: :attr:`Context.cancelled` turns true and the next
  :meth:`Context.progress` or :meth:`Context.check_cancelled` raises
  :class:`~sleipnir.Cancelled`.

The same channel carries a sync task's time limit: past its ``timeout``, the
next ``progress``, ``check_cancelled`` or ``wait`` raises (or returns) as on
cancel, but with :class:`TimeoutError`, a failure that is retried. Only code that
looks at its ``ctx`` can be stopped this way; ``async def`` tasks are cancelled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import Cancelled, SleipnirError
from .results import Capability

if TYPE_CHECKING:
    from .producer import Producer
    from .results import ResultStore

from .storekeys import cancel_key, progress_key

__all__ = ["Context", "cancel_key", "progress_key", "read_progress"]

log = logging.getLogger("sleipnir.worker")

PROGRESS_EVERY = 0.2
"""Seconds between two progress writes of one job; the last report (done == total) always goes."""


Progress = tuple[float, float | None]


def _decode(raw: bytes | None) -> Progress | None:
    if raw is None:
        return None
    try:
        done, total = msgspec.json.decode(raw)
    except (msgspec.DecodeError, ValueError, TypeError):
        return None
    return done, total


def read_progress(results: ResultStore, job_ids: Sequence[str]) -> dict[str, Progress]:
    """The last progress reported by each job that reported any, in one store call."""
    if not job_ids:
        return {}
    raw = results.get_keys([progress_key(i) for i in job_ids])
    found = {i: _decode(r) for i, r in zip(job_ids, raw, strict=True)}
    return {i: p for i, p in found.items() if p is not None}


class Context:
    """A running job's view of itself; the worker passes it as the ``ctx`` parameter.

    Built by the worker for each run. A task called directly (``task(...)``) as
    a plain function gets a detached context whose reports go nowhere.
    """

    def __init__(
        self,
        app: Producer | None,
        job_id: str,
        task: str,
        queue: str,
        attempt: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.job_id = job_id
        self.task = task
        self.queue = queue
        self.attempt = attempt
        """1 for the first delivery, higher for retries and redeliveries."""
        self.headers = headers or {}
        self._cancelled = threading.Event()
        self._timed_out = False
        self._last_write = 0.0
        self._told = False

    def __repr__(self) -> str:
        return f"<Context {self.task} {self.job_id} attempt {self.attempt}>"

    @classmethod
    def detached(cls, task: str = "?") -> Context:
        """A context for a direct call: progress goes nowhere, never cancelled."""
        return cls(None, "", task, "", 1)

    @property
    def cancelled(self) -> bool:
        """True once the worker learnt that this job was cancelled."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Mark the run cancelled (the worker calls this when it sees the request)."""
        self._cancelled.set()

    def time_out(self) -> None:
        """Mark the run over its time limit (the worker calls this for sync tasks)."""
        self._timed_out = True
        self._cancelled.set()

    @property
    def timed_out(self) -> bool:
        """True once the run went over its task's ``timeout``."""
        return self._timed_out

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on cancel (or time-out); True if woken so.

        The polite pause for a sync task (between calls to a rate-limited API, say).
        """
        return self._cancelled.wait(seconds)

    def check_cancelled(self) -> None:
        """Raise :class:`~sleipnir.Cancelled` if the job was cancelled; a cheap check.

        Raises :class:`TimeoutError` instead once the run went over its time limit
        (a failure, retried like any other).
        """
        if self._cancelled.is_set():
            if self._timed_out:
                raise TimeoutError(f"job {self.job_id} ran over its time limit")
            raise Cancelled(self.job_id)

    def progress(self, done: float, total: float | None = None) -> None:
        """Report how far the job got (``job.progress()`` reads it back).

        Writes at most every 0.2 s (the final report, ``done >= total``, always);
        a failed write is logged, never raised. Raises
        :class:`~sleipnir.Cancelled` when the job was cancelled, so a loop that
        reports progress also stops on cancel.
        """
        self.check_cancelled()
        if self.app is None:
            return
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._last_write < PROGRESS_EVERY:
            return
        self._last_write = now
        body = msgspec.json.encode([done, total])
        if not self.app.results.keeps(Capability.KEYS):
            if not self._told:
                self._told = True
                lacks = self.app.results.lacks(Capability.KEYS)
                log.warning("job %s: could not store progress: %s", self.job_id, lacks)
            return
        try:
            self.app.results.set_key(
                progress_key(self.job_id), body, self.app.clock.time() + self.app.result_ttl
            )
        except SleipnirError as exc:
            log.warning("job %s: could not store progress: %s", self.job_id, exc)


def wants_context(parameters: Sequence[Any]) -> bool:
    """Whether a task function takes a :class:`Context` as its first parameter."""
    if not parameters:
        return False
    first = parameters[0]
    if first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD):
        return False
    annotation = first.annotation
    if annotation is Context:
        return True
    if isinstance(annotation, str) and annotation.rsplit(".", 1)[-1] == "Context":
        return True
    return bool(first.name == "ctx")
