"""One writer thread that stores the jobs of concurrent requests together.

Sixteen requests that each enqueue one job on sixteen threads make sixteen
writers fight over the broker's write lock (SQLite's busy handler then sleeps
for milliseconds at a time). Here each request hands its job to one writer
thread and waits; the writer takes everything pending, claims the
``Idempotency-Key``s in order, and stores the rest with one ``Broker.enqueue``
call (all or none, durable when it returns). Only then does each request get
its answer, so a 202 still means "stored". Under load, batches grow by
themselves; alone, a request waits for no one.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..app import App
from ..brokers.base import Envelope
from ..errors import ConfigurationError, KeyReusedError, SleipnirError
from ..keys import KeyClaim, claim_for_job
from ..results import Capability

__all__ = ["EnqueueBatcher", "KeyClaim", "KeyReusedError"]

log = logging.getLogger("sleipnir.web")


@dataclass(slots=True)
class _Item:
    envelope: Envelope
    claim: KeyClaim | None
    future: Future[tuple[str, bool]] = field(default_factory=Future)
    followers: list[_Item] = field(default_factory=list)
    """Items of the same batch with the same key: they get this item's outcome."""


class EnqueueBatcher:
    """See the module docstring. ``submit`` returns a future of ``(job id, replayed)``."""

    def __init__(self, app: App, max_batch: int = 500) -> None:
        self.app = app
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, envelope: Envelope, claim: KeyClaim | None) -> Future[tuple[str, bool]]:
        """Queue a job for the writer; the future resolves once it is stored (or refused)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sleipnir-enqueue", daemon=True
                )
                self._thread.start()
        item = _Item(envelope, claim)
        self._queue.put(item)
        return item.future

    def close(self) -> None:
        """Stop the writer after what was submitted so far."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30.0)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._store(batch)
            except BaseException as exc:  # never leave a request waiting for ever
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
            if stop:
                return

    def _store(self, batch: list[_Item]) -> None:
        results = self.app.results
        accepted: list[_Item] = []
        claimed: dict[str, _Item] = {}
        for item in batch:
            want = item.claim
            if want is None:
                accepted.append(item)
                continue
            leader = claimed.get(want.key)
            if leader is not None:
                # Same key twice in one batch: the second follows the first.
                if leader.claim is not None and leader.claim.fingerprint != want.fingerprint:
                    item.future.set_exception(KeyReusedError(want.key, leader.envelope.id))
                else:
                    leader.followers.append(item)
                continue
            lacks = results.lacks(Capability.KEYS)
            if lacks is not None:
                item.future.set_exception(ConfigurationError(f"idempotency keys: {lacks}"))
                continue
            try:
                held = claim_for_job(results, want, item.envelope.id)
            except SleipnirError as exc:
                item.future.set_exception(exc)
                continue
            if held is None:
                claimed[want.key] = item
                accepted.append(item)
                continue
            held_id, held_fingerprint = held
            if held_fingerprint != want.fingerprint:
                item.future.set_exception(KeyReusedError(want.key, held_id))
            else:
                item.future.set_result((held_id, True))
        if not accepted:
            return
        try:
            self.app.broker.enqueue([item.envelope for item in accepted])
        except BaseException as exc:
            for item in accepted:
                if item.claim is not None:
                    # The job was not stored: free its key for the client's retry. If
                    # this fails too, the claim expires with its window.
                    with contextlib.suppress(SleipnirError):
                        results.release_key(item.claim.key)
                for it in (item, *item.followers):
                    it.future.set_exception(exc)
            return
        for item in accepted:
            item.future.set_result((item.envelope.id, False))
            for follower in item.followers:
                follower.future.set_result((item.envelope.id, True))
