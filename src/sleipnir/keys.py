"""Claimed keys: one mechanism for idempotency keys and unique tasks.

A key is claimed for a job in the result store with an atomic set-if-absent
(:meth:`ResultStore.claim_key`) that lasts a window of time. While the claim
lives, enqueueing under the same key gives back the job that holds it instead
of storing a second one. Three things use it:

* ``task.enqueue(..., key="order-42")`` and the HTTP API's ``Idempotency-Key``
  header (``idempotency:<key>``): a producer that retries after a timeout gets the
  same job. The same key with a *different* call raises :class:`KeyReusedError`.
* ``@app.task(unique_for=3600)`` (``unique:<task>:<fingerprint of the call>``): one
  job per task and arguments while one is queued or running; the worker drops
  the claim when the job finished for good (succeeded, or failed for good).
* periodic ticks (:mod:`sleipnir.schedule`) claim ``schedule:<task>:<tick>``.

A claim's value is ``"<job id> <fingerprint>"``; the fingerprint is a hash of the
task name, arguments and keyword arguments, so the HTTP API and a Python
producer that send the same call under the same key get the same job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from .job import check_call
from .results import ResultStore
from .storekeys import idempotency_key, unique_key

__all__ = [
    "DEFAULT_KEY_WINDOW",
    "KeyClaim",
    "claim_for_job",
    "fingerprint",
    "idempotency_key",
    "unique_key",
]

DEFAULT_KEY_WINDOW = 24 * 3600.0
"""How long an idempotency key holds its job unless told otherwise (seconds)."""

UNIQUE_HEADER = "unique-key"
"""The job header that names a unique task's claim, for the worker to drop when done."""

_encoder = msgspec.json.Encoder(order="sorted")


def fingerprint(task: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """A short hash of one call: the same for the same task, arguments and keyword arguments."""
    try:
        data = _encoder.encode([task, list(args), kwargs])
    except UnicodeEncodeError:  # a lone surrogate: refused as encode_job refuses it
        check_call(task, args, kwargs)
        raise
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """A key to claim for a job, with the fingerprint of the call and the claim's end."""

    key: str
    fingerprint: str
    expires_at: float


def claim_for_job(results: ResultStore, want: KeyClaim, job_id: str) -> tuple[str, str] | None:
    """Claim ``want.key`` for ``job_id``. ``None`` if this call claimed it, else the
    ``(job id, fingerprint)`` of the live claim that holds it."""
    held = results.claim_key(want.key, f"{job_id} {want.fingerprint}".encode(), want.expires_at)
    if held is None:
        return None
    held_id, _, held_fingerprint = held.decode().partition(" ")
    return held_id, held_fingerprint
