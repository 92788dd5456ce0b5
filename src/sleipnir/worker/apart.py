"""Jobs that run apart: a job whose lease ran out before may have killed its worker.

Such a job (``Reservation.lost > 0``) runs apart until it finishes: in a process
of its own when the app's module is known (a crash there is that job's failure,
charged and retried like any other), else alone in its worker with nothing else
held, so that it can never take batch-mates down with it again. A job whose runs
alone end with their worker dead ``MAX_CRASHES`` times goes to the dead letters.
The count lives in the result store under ``apart:<id>``, written before such a
run starts, so the next worker knows even when this one dies mid-run.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..clock import Clock
from ..errors import SleipnirError
from ..results import Capability, JobState, ResultStore
from ..storekeys import apart_key
from . import policy
from .held import JobRun, Outcome

if TYPE_CHECKING:
    from .loop import Worker

__all__ = ["APART_EXPIRES", "MAX_CRASHES", "Apart", "apart_key", "set_apart"]

log = logging.getLogger("sleipnir.worker")

MAX_CRASHES = 3
"""Runs apart that may end with their worker dead before the job goes to the dead letters.

A run apart is started only for a job whose lease ran out before, and nothing else
of its worker runs beside it that could be blamed (in a process of its own, a crash
is the job's own failure instead): a worker that dies during such runs this many
times in a row was, in all likelihood, killed by the job.
"""

APART_EXPIRES = 7 * 24 * 3600.0
"""Seconds the count of a job's unfinished runs apart is kept."""


class Apart:
    """Reads, writes and forgets the crash counts of jobs that run apart."""

    def __init__(self, store: ResultStore, clock: Clock, isolates: bool) -> None:
        self._store = store
        self._clock = clock
        self.isolates = isolates
        """Jobs run apart in processes of their own (the app's module is known)."""
        self._keeps = store.keeps(Capability.KEYS)

    def count(self, admitted: Sequence[JobRun]) -> list[Outcome]:
        """Read how often each job that runs apart killed its worker; dead outcomes for those
        at ``MAX_CRASHES``. One store call, made only when a batch holds such jobs."""
        apart = [h for h in admitted if h.apart]
        if not apart:
            return []
        counts: list[bytes | None] = [None] * len(apart)
        if not self._keeps:
            log.warning("could not read the crash counts of %d jobs: %s", len(apart), self._why())
        else:
            try:
                counts = self._store.get_keys([apart_key(h.id) for h in apart])
            except SleipnirError as exc:
                log.warning("could not read the crash counts of %d jobs: %s", len(apart), exc)
        dead: list[Outcome] = []
        for h, raw in zip(apart, counts, strict=True):
            h.crashes, h.own_crashes = _counts(raw)
            res = h.reservation
            if h.crashes >= MAX_CRASHES:
                dead.append(
                    policy.dead(
                        h,
                        f"Crashed: its worker died {h.crashes} times while the job ran apart "
                        f"(alone in its worker; limit {MAX_CRASHES}), each time "
                        "before it finished: a crash in native code, the OOM killer, a kill",
                        self._clock.time(),
                    )
                )
                continue
            log.warning(
                "job %s (%s) is back after its lease ran out %d time%s (its worker died or was "
                "cut off); it runs %s until it finishes",
                res.id,
                h.task,
                res.lost,
                "" if res.lost == 1 else "s",
                "in a process of its own" if self.isolates else "alone in this worker",
            )
        return dead

    def mark(self, held: JobRun) -> None:
        """Count this run apart before it starts: if its worker dies, the next one knows."""
        if not self._keeps:
            log.warning("could not count the run apart of job %s: %s", held.id, self._why())
            return
        try:
            self._store.set_key(
                apart_key(held.id),
                f"{held.crashes + 1}/{held.own_crashes}".encode(),
                self._clock.time() + APART_EXPIRES,
            )
        except SleipnirError as exc:
            log.warning("could not count the run apart of job %s: %s", held.id, exc)

    def forget(self, outcomes: Sequence[Outcome]) -> None:
        """A run apart that ended with an outcome did not kill its worker: drop its count,
        or keep only how often the job crashed processes of its own, for the next reason."""
        for o in outcomes:
            h = o.held
            if not h.apart or h.started_at is None or h.lost:
                continue
            if not self._keeps:
                log.warning("could not update the crash count of %s: %s", h.id, self._why())
                continue
            key = apart_key(h.id)
            try:
                if h.crashed and o.state is JobState.RETRYING:
                    expires_at = self._clock.time() + APART_EXPIRES
                    self._store.set_key(key, f"0/{h.own_crashes}".encode(), expires_at)
                else:
                    self._store.release_key(key)
            except SleipnirError as exc:
                log.warning("could not update the crash count of %s: %s", h.id, exc)

    def _why(self) -> str:
        return self._store.lacks(Capability.KEYS) or "no keys"


def set_apart(worker: Worker) -> None:
    """Run one job whose lease ran out before alone; give back every other held job.

    Used when jobs cannot run in a process of their own (the app's module is not
    known). While the chosen job waits for the running ones to end and then runs,
    this worker holds nothing else, so if it kills the worker again, no other job's
    lease runs out with it. The jobs given back never started: no try is used.
    """
    alone = worker._alone
    if alone is None:
        alone = next((h for h in worker._waiting if h.apart), None)
        if alone is None:
            return
        worker._alone = alone
    back = [h for h in worker._waiting if h is not alone]
    worker._waiting = deque([alone])
    if back:
        try:
            worker._broker.release([h.reservation for h in back])
        except SleipnirError as exc:  # their leases bring them back, lost +1 (rare)
            log.warning("could not give back %d jobs (%s); their leases will", len(back), exc)


def _counts(raw: bytes | None) -> tuple[int, int]:
    """``apart:<id>`` read: (runs apart whose worker died, processes of its own it crashed)."""
    if raw is None:
        return 0, 0
    died, _, own = raw.partition(b"/")
    try:
        return int(died), int(own or b"0")
    except ValueError:
        return 0, 0
