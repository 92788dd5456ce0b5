"""The job: one enqueued call, as data, and its JSON wire format.

A job is immutable. The broker stores its encoded bytes next to the few
fields it must index (id, queue, priority, when it becomes visible) and the
attempt count it raises on every delivery; everything else travels in the body.
Nothing here is ever unpickled: the wire format is JSON, decoded by msgspec
into a typed struct, so a malformed body fails loudly with :class:`DecodeError`.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import msgspec

from .errors import DecodeError, EncodeError, PayloadTooLargeError

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "Job", "decode_job", "encode_job", "new_job_id"]

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters per 10 bits: 13 lookups write an id (base64.b32encode is pure Python
# and took 3 of the 5 µs an id cost).
_PAIRS = [_CROCKFORD[i >> 5] + _CROCKFORD[i & 31] for i in range(1024)]
_SHIFTS = tuple(range(120, -1, -10))


class Job(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One call of a task, as it travels through the broker.

    ``attempt`` is not part of the body: the broker counts deliveries and the
    worker reads the count from the reservation.
    """

    id: str
    task: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str = "default"
    priority: int = 0
    enqueued_at: float
    eta_at: float | None = None
    headers: dict[str, str] = {}


class _IdSource:
    """Time-ordered, 128-bit ids as 26 Crockford base32 characters.

    The first 48 bits are the milliseconds since the epoch; within one
    millisecond ids from the same process increase by one, so they sort in
    creation order. The 128 bits are written most
    significant first, five to a character (the last one carries three), in an
    alphabet whose ASCII order is its numeric order, so ids sort as strings.
    Random bits come from a generator seeded by ``os.urandom`` and seeded anew
    in a forked child, so forked processes do not repeat each other.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0
        self._random = random.Random(os.urandom(32))

    def reseed(self) -> None:
        self._last = 0
        self._random = random.Random(os.urandom(32))

    def next(self) -> str:
        ms = int(time.time() * 1000)
        with self._lock:
            value = (ms << 80) | self._random.getrandbits(80)
            if value <= self._last:
                value = self._last + 1
            self._last = value
        value <<= 2  # 130 bits: 26 characters of 5 bits, the last one padded
        return "".join([_PAIRS[(value >> s) & 1023] for s in _SHIFTS])


_ids = _IdSource()
os.register_at_fork(after_in_child=_ids.reseed)


def new_job_id() -> str:
    """Return a new time-ordered job id (26 characters, sortable as a string)."""
    return _ids.next()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Job)


def encode_job(job: Job, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """Encode ``job`` as JSON bytes, refusing it if it is over ``max_payload_bytes``."""
    try:
        body = _encoder.encode(job)
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise EncodeError(f"arguments of {job.task} are not JSON-serialisable: {exc}") from exc
    if len(body) > max_payload_bytes:
        raise PayloadTooLargeError(len(body), max_payload_bytes)
    return body


def decode_job(body: bytes) -> Job:
    """Decode a job's bytes; raise :class:`DecodeError` saying what is wrong."""
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"undecodable job: {exc}") from exc


def encode_value(value: Any) -> bytes:
    """Encode a task's return value as JSON; raise :class:`EncodeError` if it cannot be."""
    try:
        return _encoder.encode(value)
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise EncodeError(f"result is not JSON-serialisable: {exc}") from exc


def decode_value(data: bytes) -> Any:
    """Decode a stored result value."""
    return msgspec.json.decode(data)
