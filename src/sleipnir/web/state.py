"""What the web app's routes share: the App, the security settings, a few figures of its own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..app import App
from ..brokers.base import QueueStats
from ..errors import ConfigurationError
from .batcher import EnqueueBatcher
from .sessions import DEFAULT_SESSION_LIFETIME, Sessions, secrets_equal

__all__ = [
    "MIN_TOKEN_LENGTH",
    "QueueSample",
    "WebState",
    "check_bind",
    "is_loopback",
    "job_created_at",
    "token_is_strong",
]

MIN_TOKEN_LENGTH = 16
"""The shortest API token accepted on an address other than loopback (characters)."""

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def job_created_at(job_id: str) -> float | None:
    """When a job id was made (its first 48 bits are epoch milliseconds), or ``None``."""
    head = job_id[:10].upper()
    if len(head) < 10 or any(c not in _CROCKFORD for c in head):
        return None
    value = 0
    for c in head:
        value = value * 32 + _CROCKFORD.index(c)
    return (value >> 2) / 1000.0  # 10 characters hold 50 bits; the first 48 are the time


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_is_strong(token: str | None) -> bool:
    """True for a token of at least :data:`MIN_TOKEN_LENGTH` characters, not all blank."""
    return token is not None and len(token) >= MIN_TOKEN_LENGTH and not token.isspace()


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback address without an API token of 16 characters or more.

    On loopback a token is optional and may be of any length, as only this host can
    reach the port.
    """
    if is_loopback(host):
        return
    if not token or token.isspace():
        raise ConfigurationError(
            f"refusing to listen on {host} without SLEIPNIR_API_TOKEN: anyone who can reach "
            "the port could enqueue jobs and delete dead letters. Set the token, or bind to "
            "127.0.0.1 behind a proxy that authenticates."
        )
    if not token_is_strong(token):
        raise ConfigurationError(
            f"refusing to listen on {host} with a SLEIPNIR_API_TOKEN of {len(token)} "
            f"character(s): on an address other than loopback the token must be at least "
            f"{MIN_TOKEN_LENGTH} characters long, so that it cannot be guessed. Make one with "
            "`openssl rand -hex 32`, or bind to 127.0.0.1."
        )


@dataclass(frozen=True, slots=True)
class QueueSample:
    """The queues as one read of ``broker.stats()`` saw them."""

    at: float
    stats: Sequence[QueueStats]


@dataclass
class WebState:
    """Settings and in-process figures of one web app."""

    app: App
    token: str | None
    max_body_bytes: int
    idempotency_window: float
    history_window: float = 3600.0
    sample_every: float = 10.0
    session_lifetime: float = DEFAULT_SESSION_LIFETIME
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    enqueued: dict[tuple[str, str], int] = field(default_factory=dict)
    """Jobs enqueued through this server, per (task, queue)."""
    queue_history: deque[QueueSample] = field(default_factory=lambda: deque(maxlen=4096))
    lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: EnqueueBatcher = field(init=False)
    sessions: Sessions = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = EnqueueBatcher(self.app)
        if self.token:
            # Derived from the token: every server process with the same token
            # accepts the same session cookies and CSRF tokens.
            self.secret = hashlib.sha256(b"sleipnir-web\0" + self.token.encode()).digest()
        self.sessions = Sessions(self.app, self.secret, self.session_lifetime)

    def sign(self, purpose: str) -> str:
        """A value only this server (or one with the same token) can make."""
        digest = hmac.new(self.secret, purpose.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    @property
    def csrf_token(self) -> str:
        """The token every dashboard form carries."""
        return self.sign("csrf")

    def token_ok(self, given: str) -> bool:
        """Constant-time comparison with the configured token."""
        return bool(self.token) and secrets_equal(given, self.token or "")

    def count_enqueued(self, task: str, queue: str) -> None:
        """Count a job enqueued through this server."""
        with self.lock:
            self.enqueued[(task, queue)] = self.enqueued.get((task, queue), 0) + 1

    def stats(self) -> list[QueueStats]:
        """``broker.stats()``, kept now and then for the oldest-ready plot."""
        stats = self.app.broker.stats()
        now = self.app.clock.time()
        with self.lock:
            history = self.queue_history
            # Samples at least sample_every apart, plus the newest read, which
            # replaces the previous newest while that one is still too young.
            sample = QueueSample(now, stats)
            if len(history) >= 2 and 0 <= now - history[-2].at < self.sample_every:
                history[-1] = sample
            else:
                history.append(sample)
            while history and history[0].at < now - self.history_window:
                history.popleft()
        return stats
