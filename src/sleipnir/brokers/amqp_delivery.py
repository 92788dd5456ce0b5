"""A RabbitMQ delivery as the broker holds it, and the headers Sleipnir writes on its
messages (attempt, lost, priority, eta, the last error).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("sleipnir.brokers.amqp")

H_ATTEMPT = "x-sleipnir-attempt"


H_LOST = "x-sleipnir-lost"


H_PRIORITY = "x-sleipnir-priority"


H_ETA = "x-sleipnir-eta"


H_ERROR = "x-sleipnir-error"


H_FAILED_AT = "x-sleipnir-failed-at"


H_PARKED = "x-sleipnir-parked"


_DROPPED_HEADERS = frozenset(
    {
        "x-death",
        "x-delivery-count",
        *(f"x-{w}-death-{k}" for w in ("first", "last") for k in ("exchange", "queue", "reason")),
    }
)
"""Headers RabbitMQ adds on dead-lettering; a new copy starts without them."""


PRODUCER_CONNECTIONS = 8
"""Connections one broker object opens at most for single enqueues (one per thread at once)."""


BULK_CONNECTIONS = 2
"""... and for bulk enqueues (``map``), each in one transaction."""


FINISHED_MARKER_TTL_MS = 24 * 3600 * 1000


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(slots=True)
class _Delivery:
    queue: str
    tag: int
    consumer: str
    redelivered: bool
    props: Any
    body: bytes
    received_at: float = field(default_factory=time.monotonic)
    parked: bool = False

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.props.headers or {})

    @property
    def id(self) -> str:
        if self.props.message_id:
            return str(self.props.message_id)
        # A message published by something else: name it by its content, so
        # that every delivery of it has the same id.
        return "raw-" + hashlib.sha1(self.body).hexdigest()[:20]

    @property
    def priority(self) -> int:
        h = self.headers
        if H_PRIORITY in h:
            return _int(h[H_PRIORITY])
        return 0 if self.props.priority is None else int(self.props.priority) - 4


@dataclass(frozen=True, slots=True)
class _Token:
    generation: int
    tag: int


@dataclass(slots=True)
class _Consumer:
    tag: str
    prefetch: int
