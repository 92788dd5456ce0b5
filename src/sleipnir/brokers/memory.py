"""The in-memory backend (``memory://``): for tests and for trying things out.

It keeps nothing across a restart and is shared only by the threads of one
process. It is the reference implementation of the contract: plain data
structures under one lock, easy to read against ``base.py``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..checks import Check, Deployment
from ..clock import Clock, SystemClock
from ..results import BeatSample, Capability, ResultRecord, ResultStore, WorkerBeat
from . import memory_checks
from .base import (
    Broker,
    BrokerJobState,
    DeadLetter,
    Envelope,
    JobInfo,
    Nack,
    QueueStats,
    Reservation,
)

__all__ = ["MemoryBroker", "MemoryResultStore"]


@dataclass(slots=True)
class _Entry:
    seq: int
    id: str
    queue: str
    body: bytes
    priority: int
    enqueued_at: float
    visible_at: float
    reserved: bool = False
    attempt: int = 0
    lost: int = 0
    token: int = 0
    last_error: str | None = None


class MemoryBroker(Broker):
    """The contract in plain Python, under one lock."""

    def __init__(self, url: str = "memory://", *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        self._jobs: dict[str, _Entry] = {}
        self._dead: dict[str, DeadLetter] = {}
        self._queues: set[str] = set()

    def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        now = self.clock.time()
        with self._lock:
            for env in envelopes:
                if env.id in self._jobs or env.id in self._dead:
                    continue  # an id already held is never overwritten
                self._jobs[env.id] = _Entry(
                    seq=next(self._seq),
                    id=env.id,
                    queue=env.queue,
                    body=env.body,
                    priority=env.priority,
                    enqueued_at=now,
                    visible_at=now if env.eta_at is None else env.eta_at,
                )
                self._queues.add(env.queue)
            self._changed.notify_all()

    def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Reservation]:
        now = self.clock.time()
        out: list[Reservation] = []
        with self._lock:
            for queue in queues:
                if len(out) >= limit:
                    break
                due = sorted(
                    (e for e in self._jobs.values() if e.queue == queue and e.visible_at <= now),
                    key=lambda e: (-e.priority, e.seq),
                )
                for entry in due[: limit - len(out)]:
                    if entry.reserved:  # due while still reserved: its lease ran out
                        entry.lost += 1
                    entry.reserved = True
                    entry.attempt += 1
                    entry.token = next(self._tokens)
                    entry.visible_at = now + lease
                    out.append(self._reservation(entry))
        return out

    @staticmethod
    def _reservation(entry: _Entry) -> Reservation:
        return Reservation(
            id=entry.id,
            queue=entry.queue,
            body=entry.body,
            attempt=entry.attempt,
            token=entry.token,
            lease_until=entry.visible_at,
            priority=entry.priority,
            lost=entry.lost,
        )

    def _owned(self, res: Reservation, now: float) -> _Entry | None:
        entry = self._jobs.get(res.id)
        if entry is None or not entry.reserved or entry.token != res.token:
            return None
        if entry.visible_at <= now:
            return None  # lease ran out: the job belongs to whoever reserves it next
        return entry

    def renew(self, reservations: Sequence[Reservation], lease: float) -> list[bool]:
        now = self.clock.time()
        out = []
        with self._lock:
            for res in reservations:
                entry = self._owned(res, now)
                if entry is not None:
                    entry.visible_at = now + lease
                out.append(entry is not None)
        return out

    def ack(self, reservations: Sequence[Reservation]) -> list[bool]:
        now = self.clock.time()
        out = []
        with self._lock:
            for res in reservations:
                entry = self._owned(res, now)
                if entry is not None:
                    del self._jobs[entry.id]
                out.append(entry is not None)
        return out

    def nack(self, nacks: Sequence[Nack]) -> list[bool]:
        now = self.clock.time()
        out = []
        with self._lock:
            for nack in nacks:
                entry = self._owned(nack.reservation, now)
                if entry is not None:
                    if nack.retry_at is None:
                        del self._jobs[entry.id]
                        self._dead[entry.id] = DeadLetter(
                            id=entry.id,
                            queue=entry.queue,
                            body=entry.body,
                            attempt=entry.attempt,
                            reason=nack.reason,
                            failed_at=now,
                            priority=entry.priority,
                        )
                    else:
                        entry.reserved = False
                        entry.visible_at = nack.retry_at
                        entry.last_error = nack.reason
                out.append(entry is not None)
            self._changed.notify_all()
        return out

    def release(
        self, reservations: Sequence[Reservation], ready_at: float | None = None
    ) -> list[bool]:
        now = self.clock.time()
        out = []
        with self._lock:
            for res in reservations:
                entry = self._owned(res, now)
                if entry is not None:
                    entry.reserved = False
                    entry.visible_at = now if ready_at is None else max(now, ready_at)
                    entry.attempt -= 1
                out.append(entry is not None)
            self._changed.notify_all()
        return out

    def job_info(self, job_id: str) -> JobInfo | None:
        now = self.clock.time()
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is not None:
                if entry.visible_at <= now:
                    state = BrokerJobState.READY
                elif entry.reserved:
                    state = BrokerJobState.RESERVED
                else:
                    state = BrokerJobState.SCHEDULED
                return JobInfo(entry.id, entry.queue, state, entry.attempt, entry.last_error)
            dead = self._dead.get(job_id)
            if dead is not None:
                return JobInfo(dead.id, dead.queue, BrokerJobState.DEAD, dead.attempt, dead.reason)
        return None

    def stats(self) -> list[QueueStats]:
        now = self.clock.time()
        with self._lock:
            out = []
            for queue in sorted(self._queues):
                entries = [e for e in self._jobs.values() if e.queue == queue]
                ready = [e for e in entries if e.visible_at <= now]
                scheduled = [e for e in entries if e.visible_at > now and not e.reserved]
                out.append(
                    QueueStats(
                        queue=queue,
                        ready=len(ready),
                        scheduled=len(scheduled),
                        running=sum(1 for e in entries if e.visible_at > now and e.reserved),
                        dead=sum(1 for d in self._dead.values() if d.queue == queue),
                        oldest_ready_at=min((e.visible_at for e in ready), default=None),
                        next_scheduled_at=min((e.visible_at for e in scheduled), default=None),
                    )
                )
            return out

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            dead = [d for d in self._dead.values() if queue is None or d.queue == queue]
        return sorted(dead, key=lambda d: (d.failed_at, d.id))[:limit]

    def retry_dead(self, ids: Sequence[str] | None = None) -> list[str]:
        now = self.clock.time()
        with self._lock:
            chosen = self._chosen(ids)
            for job_id in chosen:
                dead = self._dead.pop(job_id)
                self._jobs[job_id] = _Entry(
                    seq=next(self._seq),
                    id=job_id,
                    queue=dead.queue,
                    body=dead.body,
                    priority=dead.priority,
                    enqueued_at=now,
                    visible_at=now,
                )
            self._changed.notify_all()
        return sorted(chosen)

    def _chosen(self, ids: Sequence[str] | None) -> list[str]:
        if ids is None:
            return list(self._dead)
        return [i for i in dict.fromkeys(ids) if i in self._dead]

    def delete_dead(self, ids: Sequence[str] | None = None) -> int:
        with self._lock:
            chosen = self._chosen(ids)
            for job_id in chosen:
                del self._dead[job_id]
        return len(chosen)

    def purge(self, queue: str) -> int:
        now = self.clock.time()
        with self._lock:
            doomed = [
                e.id
                for e in self._jobs.values()
                if e.queue == queue and not (e.reserved and e.visible_at > now)
            ]
            for job_id in doomed:
                del self._jobs[job_id]
        return len(doomed)

    def diagnose(self, about: Deployment | None = None) -> list[Check]:
        return memory_checks.diagnose(lambda: self, self.url, about or Deployment())

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)


class MemoryResultStore(ResultStore):
    """Results in a dict, with expiry read from the clock."""

    capabilities = frozenset(Capability)

    def __init__(self, url: str = "memory://", *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._records: dict[str, ResultRecord] = {}
        self._beats: dict[str, WorkerBeat] = {}
        self._history: list[BeatSample] = []
        self._claims: dict[str, tuple[bytes, float]] = {}
        self._slots: dict[str, dict[str, float]] = {}

    def put(self, records: Sequence[ResultRecord]) -> None:
        with self._lock:
            for record in records:
                old = self._records.get(record.job_id)
                if old is None or old.attempt <= record.attempt:
                    self._records[record.job_id] = record

    def get(self, job_id: str) -> ResultRecord | None:
        with self._lock:
            record = self._records.get(job_id)
        if record is None or record.expires_at <= self.clock.time():
            return None
        return record

    def delete(self, job_ids: Sequence[str]) -> int:
        with self._lock:
            return sum(self._records.pop(i, None) is not None for i in job_ids)

    def purge_expired(self) -> int:
        now = self.clock.time()
        with self._lock:
            doomed = [k for k, r in self._records.items() if r.expires_at <= now]
            for key in doomed:
                del self._records[key]
            for key in [k for k, (_, e) in self._claims.items() if e <= now]:
                del self._claims[key]
            for name in list(self._slots):
                self._free_slots(name, now)
        return len(doomed)

    def beat(self, beat: WorkerBeat, keep: float) -> None:
        with self._lock:
            self._beats[beat.worker_id] = beat
            self._history.append(BeatSample(beat.worker_id, beat.at, beat.sample))
            self._history = [h for h in self._history if h.at >= beat.at - keep]

    def beats(self) -> list[WorkerBeat]:
        now = self.clock.time()
        with self._lock:
            return sorted(
                (b for b in self._beats.values() if b.expires_at > now), key=lambda b: b.worker_id
            )

    def beat_history(self, since: float) -> list[BeatSample]:
        with self._lock:
            return sorted((h for h in self._history if h.at >= since), key=lambda h: h.at)

    def claim_key(self, key: str, value: bytes, expires_at: float) -> bytes | None:
        now = self.clock.time()
        with self._lock:
            held = self._claims.get(key)
            if held is not None and held[1] > now:
                return held[0]
            self._claims[key] = (value, expires_at)
            return None

    def release_key(self, key: str) -> bool:
        with self._lock:
            return self._claims.pop(key, None) is not None

    def set_key(self, key: str, value: bytes, expires_at: float) -> None:
        with self._lock:
            self._claims[key] = (value, expires_at)

    def get_keys(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self.clock.time()
        with self._lock:
            held = [self._claims.get(key) for key in keys]
        return [h[0] if h is not None and h[1] > now else None for h in held]

    def _free_slots(self, name: str, now: float) -> dict[str, float]:
        """Drop the expired slots of ``name`` (under the lock); the live ones remain."""
        slots = self._slots.get(name, {})
        for holder in [h for h, e in slots.items() if e <= now]:
            del slots[holder]
        if not slots:
            self._slots.pop(name, None)
        return slots

    def acquire_slot(self, name: str, holder: str, limit: int, expires_at: float) -> float | None:
        if limit < 1:
            raise ValueError(f"a limit needs at least one slot, not {limit}")
        now = self.clock.time()
        with self._lock:
            slots = self._free_slots(name, now)
            if holder not in slots and len(slots) >= limit:
                return min(slots.values())
            self._slots.setdefault(name, slots)[holder] = expires_at
            return None

    def release_slot(self, name: str, holder: str) -> bool:
        now = self.clock.time()
        with self._lock:
            slots = self._free_slots(name, now)
            if slots.pop(holder, None) is None:
                return False
            if not slots:
                del self._slots[name]
            return True
