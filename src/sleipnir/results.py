"""The result-store contract: job states, result values and errors, with an expiry.

The broker knows where a waiting job stands (queued, scheduled, running);
the result store keeps what happened to it (retrying, succeeded, failed) and
the value or error, until ``expires_at``. The worker writes a record after
the task finished and *before* it acknowledges the job, so an acked job
always has its outcome stored.

The same store keeps the workers' heartbeats (:class:`WorkerBeat`, the latest
one per worker plus a bounded history of compact samples for plots) and
claimed keys (:meth:`ResultStore.claim_key`, set-if-absent with an expiry, what
the HTTP API's ``Idempotency-Key`` uses), so monitoring works on every backend.
The store moves bytes; :mod:`sleipnir.monitor` says what is in them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

__all__ = ["BeatSample", "Capability", "JobState", "ResultRecord", "ResultStore", "WorkerBeat"]


class Capability(StrEnum):
    """What a result store keeps beyond outcomes (:attr:`ResultStore.capabilities`)."""

    BEATS = "beats"
    """Heartbeats: ``beat``, ``beats``, ``beat_history`` (monitoring, the dashboard)."""
    KEYS = "keys"
    """Claimed keys: ``claim_key``, ``release_key``, ``set_key``, ``get_keys`` (idempotency
    and unique keys, periodic ticks, progress, cancel requests, crash counts)."""
    SLOTS = "slots"
    """Limits: ``acquire_slot``, ``release_slot`` (rate and concurrency limits)."""


_NAMES = {
    Capability.BEATS: "heartbeats",
    Capability.KEYS: "claimed keys",
    Capability.SLOTS: "limits",
}


_GROUPS = {
    Capability.BEATS: ("beat", "beats", "beat_history"),
    Capability.KEYS: ("claim_key", "release_key", "set_key", "get_keys"),
    Capability.SLOTS: ("acquire_slot", "release_slot"),
}


class JobState(StrEnum):
    """The states a job goes through, as :meth:`JobHandle.status` reports them."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    """Cancelled before it finished: a queued job never runs, a running one was stopped."""
    UNKNOWN = "unknown"
    """Never enqueued here, or its record expired."""

    @property
    def finished(self) -> bool:
        """True for the states a job does not leave by itself."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


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


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """A worker's latest heartbeat, as the result store keeps it."""

    worker_id: str
    at: float
    """When it was sent (epoch seconds)."""
    expires_at: float
    """After this the worker counts as gone and :meth:`ResultStore.beats` leaves it out."""
    body: bytes
    """The whole beat, JSON (see :mod:`sleipnir.monitor`)."""
    sample: bytes
    """The compact part kept in the history for plots, JSON."""


@dataclass(frozen=True, slots=True)
class BeatSample:
    """One entry of the heartbeat history."""

    worker_id: str
    at: float
    sample: bytes


class ResultStore(ABC):
    """Where outcomes are kept. One contract, several backends."""

    url: str
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    """What this store keeps beyond outcomes. A store class that does not declare it
    keeps the groups whose methods it all overrides."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "capabilities" not in cls.__dict__:
            cls.capabilities = frozenset(
                cap
                for cap, names in _GROUPS.items()
                if all(getattr(cls, n) is not getattr(ResultStore, n) for n in names)
            )

    def keeps(self, capability: Capability) -> bool:
        """Whether this store keeps ``capability`` (ask before calling its methods)."""
        return capability in self.capabilities

    def lacks(self, *capabilities: Capability) -> str | None:
        """Why this store cannot serve ``capabilities`` (one line), or ``None`` if it can."""
        missing = [_NAMES[c] for c in capabilities if c not in self.capabilities]
        if not missing:
            return None
        return f"{type(self).__name__} keeps no {' and no '.join(missing)}"

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

    # -- heartbeats, claimed keys and limits ----------------------------------------
    #
    # Not abstract, so that a store written before them still opens. What a store
    # keeps is declared in ``capabilities`` (or found from the methods it overrides);
    # callers ask ``keeps()`` once and say what they cannot do (the worker logs it, the
    # dashboard shows it). Calling a method the store does not keep is a programming
    # error: the defaults raise NotImplementedError, and nobody catches it.

    def beat(self, beat: WorkerBeat, keep: float) -> None:
        """Store ``beat`` as its worker's latest and add its sample to the history.

        Samples older than ``beat.at - keep`` seconds are dropped, so the history
        stays bounded.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no heartbeats")

    def beats(self) -> list[WorkerBeat]:
        """The latest beat of every worker whose beat has not expired, by worker id."""
        raise NotImplementedError(f"{type(self).__name__} keeps no heartbeats")

    def beat_history(self, since: float) -> list[BeatSample]:
        """The samples sent at or after ``since``, oldest first."""
        raise NotImplementedError(f"{type(self).__name__} keeps no heartbeats")

    def claim_key(self, key: str, value: bytes, expires_at: float) -> bytes | None:
        """Store ``value`` under ``key`` unless a live claim exists; atomic.

        Returns ``None`` when this call claimed the key, else the value of the
        claim that holds it. A claim past its ``expires_at`` counts as absent.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no claimed keys")

    def release_key(self, key: str) -> bool:
        """Drop a claim (when the work it guarded was not done); ``False`` if there was none."""
        raise NotImplementedError(f"{type(self).__name__} keeps no claimed keys")

    def set_key(self, key: str, value: bytes, expires_at: float) -> None:
        """Store ``value`` under ``key`` until ``expires_at``, replacing what was there.

        The same keys as :meth:`claim_key`: progress reports and cancel requests
        (:mod:`sleipnir.context`) live beside the claims.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no claimed keys")

    def get_keys(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value under each key, ``None`` where there is none or it expired; one round trip."""
        raise NotImplementedError(f"{type(self).__name__} keeps no claimed keys")

    # -- limits ---------------------------------------------------------------------

    def acquire_slot(self, name: str, holder: str, limit: int, expires_at: float) -> float | None:
        """Take one of the ``limit`` slots of ``name`` for ``holder`` until ``expires_at``.

        Atomic across processes and hosts. A slot past its ``expires_at`` is free.
        When ``holder`` already holds a slot of ``name``, its end moves to
        ``expires_at`` (a renewal) and the call succeeds whatever the count.

        Returns ``None`` when ``holder`` holds a slot now; otherwise the earliest
        ``expires_at`` among the current holders, when a slot frees at the latest.
        Concurrency limits hold a slot while a job runs (released when it ends,
        renewed with its lease); rate limits take a slot per run that lasts the
        rate's period and is never released, which makes a sliding-window log.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no limits")

    def release_slot(self, name: str, holder: str) -> bool:
        """Give back ``holder``'s slot of ``name``; ``False`` if it held none."""
        raise NotImplementedError(f"{type(self).__name__} keeps no limits")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
