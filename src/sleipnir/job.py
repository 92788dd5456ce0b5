"""The job: one enqueued call, as data, and its JSON wire format.

A job is immutable. The broker stores its encoded bytes next to the few
fields it must index (id, queue, priority, when it becomes visible) and the
attempt count it raises on every delivery; everything else travels in the body.
Nothing here is ever unpickled: the wire format is JSON, decoded by msgspec
into a typed struct, so a malformed body fails loudly with :class:`DecodeError`.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from .errors import DecodeError, EncodeError, PayloadTooLargeError

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "Job",
    "check_call",
    "decode_job",
    "encode_job",
    "encode_value",
    "new_job_id",
    "not_exact_json",
]

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

# What JSON cannot carry exactly, and msgspec does not refuse by itself: it writes
# NaN and the infinities as ``null`` (the call would run with None in their place)
# and raises a bare UnicodeEncodeError on a lone surrogate. Both are refused here,
# saying where they are. On the fast path the cost is one search of the encoded bytes
# for ``null`` (``rfind``: on short bodies it is twice as quick as ``in``). A body
# that has one (a None argument, or the word in a string) is encoded again as
# msgpack, where every float is 0xCB and eight big-endian bytes, and NaN and the
# infinities are the ones whose exponent is all ones; only a match there (or
# something msgpack cannot encode) is walked in Python, to say where it is.
_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_FINITE_FLOAT = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")
_msgpack = msgspec.msgpack.Encoder()


def _may_hold_non_finite(value: Any) -> bool:
    """False when ``value`` surely holds no NaN and no infinity."""
    try:
        packed = _msgpack.encode(value)
    except (TypeError, msgspec.EncodeError, OverflowError, ValueError):
        return True  # let the walk decide
    return _NON_FINITE_FLOAT.search(packed) is not None


def encode_job(job: Job, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """Encode ``job`` as JSON bytes, refusing it if it is over ``max_payload_bytes``.

    Raises :class:`EncodeError` when an argument is not JSON-serialisable or would
    not come back as it was sent: NaN, an infinity, or a string with a lone
    surrogate (not valid UTF-8), saying which argument.
    """
    try:
        body = _encoder.encode(job)
    except UnicodeEncodeError:
        raise EncodeError(_job_refusal(job) or f"{job.task}: a string is not valid UTF-8") from None
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise EncodeError(f"arguments of {job.task} are not JSON-serialisable: {exc}") from exc
    if len(body) > max_payload_bytes:
        raise PayloadTooLargeError(len(body), max_payload_bytes)
    if body.rfind(b"null") >= 0 and _may_hold_non_finite(job):
        reason = _job_refusal(job)
        if reason is not None:
            raise EncodeError(reason)
    return body


def check_call(task: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Raise :class:`EncodeError` if the arguments of a call to ``task`` cannot be
    sent as JSON exactly (see :func:`encode_job`); for calls that travel inside
    another job (the later steps of a chain, a group's callback)."""
    try:
        body: bytes | None = _encoder.encode((args, kwargs))
    except UnicodeEncodeError:
        body = None
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise EncodeError(f"arguments of {task} are not JSON-serialisable: {exc}") from exc
    if body is None or (body.rfind(b"null") >= 0 and _may_hold_non_finite((args, kwargs))):
        reason = _call_refusal(task, args, kwargs)
        if reason is not None:
            raise EncodeError(reason)
        if body is None:
            raise EncodeError(f"arguments of {task}: a string is not valid UTF-8")


def _call_refusal(task: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    reason = not_exact_json(args, "argument args") or not_exact_json(kwargs, "argument kwargs")
    return None if reason is None else f"cannot enqueue {task}: {reason}"


def _job_refusal(job: Job) -> str | None:
    reason = _call_refusal(job.task, job.args, job.kwargs)
    if reason is not None:
        return reason
    reason = not_exact_json(job.headers, "header") or not_exact_json(
        [job.id, job.task, job.queue], "job field"
    )
    return None if reason is None else f"cannot enqueue {job.task}: {reason}"


def not_exact_json(value: Any, where: str) -> str | None:
    """Why ``value`` would not survive a trip through JSON, or ``None`` when it would.

    Finds the first NaN, infinity or string with a lone surrogate (in a value or a
    dict key, at any depth) and names it by its path under ``where``, such as
    ``argument kwargs['s'] contains a lone surrogate \\ud800 (not valid UTF-8)``.
    Values msgspec cannot encode at all are not its business (the encoder says so).
    """
    try:
        plain = msgspec.to_builtins(value)
    except (TypeError, msgspec.EncodeError, OverflowError, RecursionError):
        plain = value  # walk what is there; the unencodable part is reported by encode
    try:
        for path, why in _faults(plain, ()):
            return f"{where}{''.join(f'[{k!r}]' for k in path)} {why}"
    except RecursionError:
        pass  # nested deeper than the encoder goes: it refuses that itself
    return None


def _faults(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Yield (path, what is wrong) for each value JSON cannot carry, depth first."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found is not None:
            yield path, f"contains a lone surrogate {_escape(found.group())} (not valid UTF-8)"
    elif isinstance(value, float):
        if math.isnan(value):
            yield path, "is NaN; NaN is not valid JSON"
        elif math.isinf(value):
            yield path, f"is {value}; infinity is not valid JSON"
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):  # a number key is written as a string, NaN as "nan"
                for _, why in _faults(key, ()):
                    yield path, f"has a key {key!r} that {why}"
            yield from _faults(item, (*path, key))
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield from _faults(item, (*path, index))


def _escape(char: str) -> str:
    return f"\\u{ord(char):04x}"


def decode_job(body: bytes) -> Job:
    """Decode a job's bytes; raise :class:`DecodeError` saying what is wrong."""
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"undecodable job: {exc}") from exc


def encode_value(value: Any) -> bytes:
    """Encode a task's return value as JSON; raise :class:`EncodeError` if it cannot be,
    or if it holds NaN, an infinity or a lone surrogate (see :func:`encode_job`)."""
    try:
        body = _encoder.encode(value)
    except UnicodeEncodeError:
        raise EncodeError(not_exact_json(value, "result") or "result is not valid UTF-8") from None
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise EncodeError(f"result is not JSON-serialisable: {exc}") from exc
    if body.rfind(b"null") >= 0 and _may_hold_non_finite(value):
        reason = not_exact_json(value, "result")
        if reason is not None:
            raise EncodeError(reason)
    return body


def decode_value(data: bytes) -> Any:
    """Decode a stored result value."""
    return msgspec.json.decode(data)
