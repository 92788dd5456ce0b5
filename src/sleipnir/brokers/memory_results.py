"""``memory://`` results: a dict with expiry read from the clock; heartbeats, claimed keys
and slots under one lock. The reference result store.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..clock import Clock, SystemClock
from ..results import BeatSample, Capability, ResultRecord, ResultStore, WorkerBeat


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
