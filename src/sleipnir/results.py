"""The result-store contract: job states, result values and errors, with an expiry.

The broker knows where a waiting job stands (queued, scheduled, running);
the result store keeps what happened to it (retrying, succeeded, failed) and
the value or error, until ``expires_at``. The worker writes a record after
the task finished and *before* it acknowledges the job, so an acked job
always has its outcome stored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["JobState", "ResultRecord", "ResultStore"]


class JobState(StrEnum):
    """The states a job goes through, as :meth:`JobHandle.status` reports them."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"
    """Never enqueued here, or its record expired."""

    @property
    def finished(self) -> bool:
        """True for the states a job does not leave by itself."""
        return self in (JobState.SUCCEEDED, JobState.FAILED)


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """The stored outcome of one job."""

    job_id: str
    state: JobState
    task: str
    queue: str
    attempt: int
    finished_at: float
    expires_at: float
    value: bytes | None = None
    """The return value as JSON, for a succeeded job."""
    error: str | None = None
    """The error's text, for a failed or retrying job."""
    started_at: float | None = None


class ResultStore(ABC):
    """Where outcomes are kept. One contract, several backends."""

    url: str

    @abstractmethod
    def put(self, records: Sequence[ResultRecord]) -> None:
        """Store the records, all in one go; durable when this returns.

        A record replaces the stored one of the same job unless the stored one
        is of a later attempt: a worker that lost its lease and settles late
        must not overwrite the outcome of the delivery that replaced it.
        """

    @abstractmethod
    def get(self, job_id: str) -> ResultRecord | None:
        """The record of ``job_id``, or ``None`` if there is none or it expired."""

    @abstractmethod
    def delete(self, job_ids: Sequence[str]) -> int:
        """Forget the records; return how many there were."""

    @abstractmethod
    def purge_expired(self) -> int:
        """Delete expired records; return how many."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
