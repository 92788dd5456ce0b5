"""The worker's policy, pure: which job may run, and what each way a run ends means.

Nothing here talks to a broker, a store or a thread: each function takes the
time and the random source it needs, so every rule is tested on its own.

* :func:`admit`: decode and check a reservation; a job that cannot run becomes a
  dead outcome (undecodable, unknown task, arguments that do not fit, lost too
  often).
* :func:`success`: a returned value, encoded; one that cannot be is the job's failure.
* :func:`failure`: a raised exception becomes a retry with backoff, the dead
  letters, or a cancel; never raises itself.
* :func:`backoff_delay`: exponential, capped, with jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections.abc import Callable
from typing import Any

from ..bounded import cap_text
from ..brokers.base import Reservation
from ..errors import Cancelled, DecodeError, EncodeError, Fail, Retry, SleipnirError
from ..isolated import ProcessCrashed, RemoteError
from ..job import decode_job, encode_value
from ..loopwatch import BlockedLoop
from ..results import JobState
from ..task import Task
from .held import JobRun, Outcome

__all__ = ["MAX_LOST", "admit", "backoff_delay", "cancelled", "dead", "failure", "success"]

log = logging.getLogger("sleipnir.worker")

MAX_LOST = 10
"""Deliveries of one job that may end with the lease running out, for any reason, before
it goes to the dead letters: a backstop for hosts that keep dying or losing the broker."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retrying after failed attempt number ``attempt`` (1-based).

    Exponential (``base * 2**(attempt-1)``, at most ``cap``) with "equal
    jitter": a uniform draw from the upper half, so retries of many jobs that
    failed together spread out but none comes back sooner than half the delay.
    """
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    draw: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + draw


def admit(
    res: Reservation, deadline: float, get_task: Callable[[str], Task[Any, Any]], now: float
) -> JobRun | Outcome:
    """Decode and check a reservation; a job that cannot run becomes a dead outcome."""
    try:
        job = decode_job(res.body)
    except DecodeError as exc:
        return dead(JobRun(res, None, None, deadline=deadline), str(exc), now)
    try:
        task = get_task(job.task)
        task.check_arguments(job.args, job.kwargs)
    except SleipnirError as exc:
        return dead(JobRun(res, job, None, deadline=deadline), str(exc), now)
    held = JobRun(res, job, task, apart=res.lost > 0, deadline=deadline)
    if res.lost >= MAX_LOST:
        return dead(
            held,
            f"Crashed: its lease ran out {res.lost} times before it finished (limit "
            f"{MAX_LOST}): the workers holding it died or lost the broker each time",
            now,
        )
    return held


def dead(held: JobRun, reason: str, now: float) -> Outcome:
    """A failure for good: the job goes to the dead letters with ``reason``."""
    reason = cap_text(reason)
    log.error("job %s (%s) goes to the dead letters: %s", held.id, held.task, reason)
    return Outcome(held, JobState.FAILED, now, error=reason)


def cancelled(held: JobRun, now: float) -> Outcome:
    return Outcome(held, JobState.CANCELLED, now, error="cancelled")


def success(held: JobRun, value: Any, now: float) -> Outcome:
    """The outcome of a run that returned ``value``; one that cannot be encoded fails."""
    try:
        body = encode_value(value)
    except EncodeError as exc:
        return dead(held, safe_str(exc), now)
    except BaseException as exc:  # e.g. a __str__ that raises while encoding
        return dead(
            held, f"EncodeError: the return value could not be encoded ({describe(exc)})", now
        )
    return Outcome(held, JobState.SUCCEEDED, now, value=body)


def failure(held: JobRun, exc: BaseException, now: float, rng: random.Random) -> Outcome:
    """The outcome of a run that raised ``exc``; never raises itself."""
    try:
        outcome = _judge(held, exc, now, rng)
    except BaseException as broken:  # a hostile exception must not wedge its job
        outcome = placeholder(held, exc, f"({type_name(broken)} while describing it)", now, rng)
    outcome.exception = exc
    return outcome


def placeholder(
    held: JobRun, exc: BaseException, why: str, now: float, rng: random.Random
) -> Outcome:
    """A failure whose text could not be built: stored with a placeholder, retried by policy."""
    error = f"{type_name(exc)}: <the error could not be described {why}>"
    log.error("job %s (%s): %s", held.id, held.task, error)
    options = held.definition.options if held.definition is not None else None
    charged = held.charged
    if options is None or charged > options.retries:
        retries = 0 if options is None else options.retries
        return Outcome(
            held,
            JobState.FAILED,
            now,
            error=f"{error}\n(attempt {charged} of {retries + 1}, no retries left)",
        )
    delay = backoff_delay(charged, options.backoff, options.max_backoff, rng)
    return Outcome(held, JobState.RETRYING, now, error=error, retry_at=now + delay)


def _judge(held: JobRun, exc: BaseException, now: float, rng: random.Random) -> Outcome:
    task = held.definition
    assert task is not None  # only jobs that ran fail this way
    attempt = held.charged
    options = task.options
    if isinstance(exc, Cancelled) or (held.cancelled and isinstance(exc, asyncio.CancelledError)):
        return cancelled(held, now)
    if isinstance(exc, Fail):
        return dead(held, f"Fail: {exc.reason}", now)
    if (
        isinstance(exc, TimeoutError)
        and options.timeout
        and (
            task.is_async
            or task.options.isolate
            or held.isolated
            or (held.ctx is not None and held.ctx.timed_out)
        )
    ):
        error = f"TimeoutError: the job ran over its time limit of {options.timeout} s"
        if isinstance(exc, BlockedLoop):
            error = f"TimeoutError: the job {exc}"
    else:
        error = describe(exc)
    if isinstance(exc, ProcessCrashed):
        held.crashed = True
        held.own_crashes += 1
        error += (
            f"\n(the job has crashed {held.own_crashes} process"
            f"{'' if held.own_crashes == 1 else 'es'} of its own"
            + (
                f", after its lease ran out {held.reservation.lost} time"
                f"{'' if held.reservation.lost == 1 else 's'} in workers that died or were "
                "cut off"
                if held.reservation.lost
                else ""
            )
            + ")"
        )
    if attempt > options.retries:
        return dead(
            held, f"{error}\n(attempt {attempt} of {options.retries + 1}, no retries left)", now
        )
    if isinstance(exc, Retry) and exc.after is not None:
        delay = exc.after
    else:
        delay = backoff_delay(attempt, options.backoff, options.max_backoff, rng)
    log.info(
        "job %s (%s) attempt %d failed, retry in %.2fs: %s",
        held.id,
        task.name,
        attempt,
        delay,
        first_line(error),
    )
    return Outcome(held, JobState.RETRYING, now, error=error, retry_at=now + delay)


def describe(exc: BaseException) -> str:
    """The error's first line, then its traceback: what ``dead list`` and ``result()`` show.

    Capped (:func:`~sleipnir.bounded.cap_text`); an exception whose ``__str__``
    raises is named with a placeholder instead.
    """
    if isinstance(exc, RemoteError):
        return cap_text(exc.text)  # the task's own error and traceback, from its process
    head = f"{type_name(exc)}: {safe_str(exc)}"
    tb = "".join(traceback.format_exception(exc)).rstrip()
    return cap_text(f"{head}\n{tb}")


def type_name(exc: BaseException) -> str:
    try:
        return str(type(exc).__name__)
    except BaseException:  # a metaclass can make even this raise
        return "<exception>"


def safe_str(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when its ``__str__`` raises (then its ``repr``)."""
    try:
        return str(exc)
    except BaseException as broken:  # hostile __str__
        why = f"<its __str__ raised {type_name(broken)}>"
    try:
        return f"{why} {object.__repr__(exc)}"
    except BaseException:
        return why


def first_line(text: str, limit: int = 500) -> str:
    """The first line of ``text``, at most ``limit`` characters: what a log line shows."""
    line = text.split("\n", 1)[0]
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line):,} characters)"
