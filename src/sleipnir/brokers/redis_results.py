"""Results, heartbeats, claimed keys and limit slots on Redis, beside the jobs: hashes that
expire by themselves, one script per operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..clock import Clock, SystemClock
from ..results import BeatSample, Capability, JobState, ResultRecord, ResultStore, WorkerBeat
from .redis_errors import _errors, _s
from .redis_link import Direct, Script, connect


class RedisResultStore(ResultStore):
    """Results as Redis hashes that expire by themselves."""

    capabilities = frozenset(Capability)

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self.client, self.prefix = connect(url)
        self._direct = Direct(self.client)
        self._put = Script(self._direct, "result_put")
        self._claim = Script(self._direct, "claim")
        self._key_set = Script(self._direct, "key_set")
        self._key_get = Script(self._direct, "key_get")
        self._key_del = Script(self._direct, "key_del")
        self._slot_acquire = Script(self._direct, "slot_acquire")
        self._slot_release = Script(self._direct, "slot_release")

    def put(self, records: Sequence[ResultRecord]) -> None:
        if not records:
            return
        args: list[Any] = [self.prefix]
        for r in records:
            args += [
                r.job_id, r.state.value, r.task, r.queue, r.attempt,
                "" if r.started_at is None else repr(r.started_at),
                repr(r.finished_at), repr(r.expires_at),
                r.value if r.value is not None else "", "1" if r.value is not None else "0",
                r.error if r.error is not None else "", "1" if r.error is not None else "0",
            ]  # fmt: skip
        with _errors(self.url):
            self._put(args)

    def get(self, job_id: str) -> ResultRecord | None:
        with _errors(self.url):
            # On the thread's own connection: a producer waiting for a result polls this.
            row = self._direct("HGETALL", f"{self.prefix}:result:{job_id}")
        if not row:
            return None
        pairs = row.items() if isinstance(row, dict) else zip(row[::2], row[1::2], strict=True)
        f = {_s(k): v for k, v in pairs}
        expires_at = float(f["expires"])
        if expires_at <= self.clock.time():
            return None
        return ResultRecord(
            job_id=job_id,
            state=JobState(_s(f["state"])),
            task=_s(f["task"]),
            queue=_s(f["queue"]),
            attempt=int(f["attempt"]),
            finished_at=float(f["finished"]),
            expires_at=expires_at,
            value=bytes(f["value"]) if "value" in f else None,
            error=_s(f["error"]) if "error" in f else None,
            started_at=float(f["started"]) if "started" in f else None,
        )

    def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0
        with _errors(self.url):
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*[f"{self.prefix}:result:{i}" for i in job_ids])
            pipe.zrem(f"{self.prefix}:result-expiry", *job_ids)
            deleted, _ = pipe.execute()
        return int(deleted)

    def purge_expired(self) -> int:
        key = f"{self.prefix}:result-expiry"
        now = repr(self.clock.time())
        with _errors(self.url):
            ids = [_s(i) for i in self.client.zrangebyscore(key, "-inf", now)]
            if not ids:
                return 0
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*[f"{self.prefix}:result:{i}" for i in ids])
            pipe.zrem(key, *ids)
            pipe.execute()
        return len(ids)

    def beat(self, beat: WorkerBeat, keep: float) -> None:
        p = self.prefix
        key = f"{p}:beat:{beat.worker_id}"
        with _errors(self.url):
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(
                key,
                mapping={
                    "at": repr(beat.at),
                    "expires": repr(beat.expires_at),
                    "body": beat.body,
                    "sample": beat.sample,
                },
            )
            pipe.pexpireat(key, int(beat.expires_at * 1000) + 1)
            pipe.zadd(f"{p}:beats", {beat.worker_id: beat.expires_at})
            pipe.zremrangebyscore(f"{p}:beats", "-inf", repr(beat.at - keep))
            pipe.zadd(f"{p}:beat-history", {beat.worker_id.encode() + b" " + beat.sample: beat.at})
            pipe.zremrangebyscore(f"{p}:beat-history", "-inf", f"({beat.at - keep!r}")
            pipe.execute()

    def beats(self) -> list[WorkerBeat]:
        now = self.clock.time()
        with _errors(self.url):
            ids = [
                _s(i)
                for i in self.client.zrangebyscore(f"{self.prefix}:beats", f"({now!r}", "+inf")
            ]
            pipe = self.client.pipeline(transaction=False)
            for worker_id in ids:
                pipe.hgetall(f"{self.prefix}:beat:{worker_id}")
            rows = pipe.execute() if ids else []
        out = []
        for worker_id, row in zip(ids, rows, strict=True):
            f = {_s(k): v for k, v in row.items()}
            if not f or float(f["expires"]) <= now:
                continue
            out.append(
                WorkerBeat(
                    worker_id,
                    float(f["at"]),
                    float(f["expires"]),
                    bytes(f["body"]),
                    bytes(f["sample"]),
                )
            )
        return sorted(out, key=lambda b: b.worker_id)

    def beat_history(self, since: float) -> list[BeatSample]:
        with _errors(self.url):
            rows = self.client.zrangebyscore(
                f"{self.prefix}:beat-history", repr(since), "+inf", withscores=True
            )
        out = []
        for member, at in rows:
            worker_id, _, sample = bytes(member).partition(b" ")
            out.append(BeatSample(worker_id.decode(), float(at), sample))
        return out

    def claim_key(self, key: str, value: bytes, expires_at: float) -> bytes | None:
        with _errors(self.url):
            held = self._claim(
                [f"{self.prefix}:claim:{key}", value, repr(expires_at), repr(self.clock.time())]
            )
        return None if held is None else bytes(held)

    def release_key(self, key: str) -> bool:
        with _errors(self.url):
            # a script, so that a late request is refused like every other write
            return bool(self._key_del([f"{self.prefix}:claim:{key}"]))

    def set_key(self, key: str, value: bytes, expires_at: float) -> None:
        with _errors(self.url):
            self._key_set([f"{self.prefix}:claim:{key}", value, repr(expires_at)])

    def get_keys(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with _errors(self.url):
            held = self._key_get(
                [repr(self.clock.time()), *(f"{self.prefix}:claim:{key}" for key in keys)]
            )
        return [None if h is None else bytes(h) for h in held]

    def acquire_slot(self, name: str, holder: str, limit: int, expires_at: float) -> float | None:
        if limit < 1:
            raise ValueError(f"a limit needs at least one slot, not {limit}")
        args = [f"{self.prefix}:slots:{name}", holder, limit, repr(expires_at)]
        with _errors(self.url):
            first_free = self._slot_acquire([*args, repr(self.clock.time())])
        return None if first_free is None else float(first_free)

    def release_slot(self, name: str, holder: str) -> bool:
        args = [f"{self.prefix}:slots:{name}", holder, repr(self.clock.time())]
        with _errors(self.url):
            return bool(self._slot_release(args))

    def close(self) -> None:
        self._direct.close()
        self.client.close()
