"""The one exception tree of Sleipnir.

Everything Sleipnir raises on purpose derives from :class:`SleipnirError`.
Control flow that *task code* raises (:class:`Retry`, :class:`Fail`) is kept
apart: it is not an error of Sleipnir's, it is the task telling the worker
what to do with the current job.
"""

from __future__ import annotations

__all__ = [
    "BrokerConnectionError",
    "BrokerError",
    "Cancelled",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "Fail",
    "InvalidArgumentsError",
    "JobCancelledError",
    "JobFailedError",
    "JobNotFoundError",
    "KeyReusedError",
    "PayloadTooLargeError",
    "ResultTimeoutError",
    "Retry",
    "SleipnirError",
    "TaskControl",
    "UnknownTaskError",
]


class SleipnirError(Exception):
    """Base of every error Sleipnir raises."""


class ConfigurationError(SleipnirError):
    """A setting is missing, malformed, or two settings contradict each other."""


class BrokerError(SleipnirError):
    """The broker refused an operation or failed while doing it."""


class BrokerConnectionError(BrokerError):
    """The broker cannot be reached (or the connection was lost mid-operation)."""


class EncodeError(SleipnirError, TypeError):
    """A job's arguments or a task's result cannot be encoded as JSON."""


class PayloadTooLargeError(EncodeError):
    """An encoded job is larger than the configured payload limit; nothing was stored."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"job payload is {size} bytes, over the limit of {limit} bytes; "
            "pass a reference (a path, a URL, a row id) instead of the data itself, "
            "or raise App(max_payload_bytes=...)"
        )


class DecodeError(SleipnirError, ValueError):
    """Bytes taken from a queue are not a valid job."""


class UnknownTaskError(SleipnirError, LookupError):
    """No task of that name is registered on the app."""


class InvalidArgumentsError(SleipnirError, TypeError):
    """The arguments of a call do not fit the task's signature."""


class KeyReusedError(SleipnirError, ValueError):
    """An idempotency key was sent again with a different call while its claim lives."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"key {key!r} already names job {job_id} for a different call;"
            " use a new key for a new call"
        )
        self.key = key
        self.job_id = job_id


class JobNotFoundError(SleipnirError, LookupError):
    """No job of that id is known (never enqueued, or its result expired)."""


class ResultTimeoutError(SleipnirError, TimeoutError):
    """The job had not finished when the wait for its result ran out."""


class JobFailedError(SleipnirError):
    """The job ended in failure; ``error`` holds the remote error's text."""

    def __init__(self, job_id: str, error: str) -> None:
        self.job_id = job_id
        self.error = error
        super().__init__(f"job {job_id} failed: {error}")


class JobCancelledError(JobFailedError):
    """The job was cancelled (:meth:`JobHandle.cancel`) before it finished."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, "cancelled")


class TaskControl(Exception):
    """Base of the control-flow exceptions task code may raise."""


class Retry(TaskControl):
    """Raised by task code: run this job again after ``after`` seconds.

    Counts as an attempt; when the task's retries are used up the job fails.
    ``after=None`` uses the task's backoff.
    """

    def __init__(self, after: float | None = None, reason: str = "retry requested") -> None:
        if after is not None and after < 0:
            raise ValueError("Retry(after=...) must be >= 0 seconds")
        self.after = after
        self.reason = reason
        super().__init__(reason)


class Fail(TaskControl):
    """Raised by task code: fail this job now, without retrying."""

    def __init__(self, reason: str = "failed by the task") -> None:
        self.reason = reason
        super().__init__(reason)


class Cancelled(TaskControl):
    """Raised in task code when its job was cancelled: stop here, do not retry.

    :meth:`Context.progress` and :meth:`Context.check_cancelled` raise it; an
    ``async def`` task gets :class:`asyncio.CancelledError` instead. The job ends
    as "cancelled".
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} was cancelled")
