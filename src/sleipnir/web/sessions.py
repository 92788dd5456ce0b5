"""Dashboard sessions: signed cookies that expire, and that a logout revokes on the server.

A session cookie reads ``<id>.<expires_at>.<signature>``: a random session id, the
epoch second after which it is refused, and an HMAC-SHA256 of both under the web
app's secret. The secret is derived from the API token, so every server process
started with the same token checks a cookie without sharing any memory with the
process that issued it, and changing the token ends every session at once.

Logging out revokes the session id. The revocation is written to the result store
(key ``web-session-revoked:<id>``, kept until the cookie expires anyway), which
every process sharing that store reads, and to a set in this process, which is all
there is when the result store keeps no keys. Neither grows without bound: entries
go when the cookie they revoke would have expired.

This module must not compare secrets with ``==``: every comparison of something a
client sent with something secret goes through :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import threading
from dataclasses import dataclass, field
from enum import Enum

from ..app import App
from ..results import Capability
from ..storekeys import session_revoked_key

__all__ = ["DEFAULT_SESSION_LIFETIME", "SESSION_COOKIE", "SessionCheck", "Sessions"]

SESSION_COOKIE = "sleipnir_session"
DEFAULT_SESSION_LIFETIME = 12 * 3600.0
"""How long a dashboard login lasts unless told otherwise (seconds)."""


class SessionCheck(Enum):
    """What a presented session cookie turned out to be."""

    VALID = "valid"
    INVALID = "invalid"  # not one this server signed (or signed under another token)
    EXPIRED = "expired"
    REVOKED = "revoked"  # logged out


def secrets_equal(given: str, expected: str) -> bool:
    """Constant-time equality of two strings (any characters, any lengths)."""
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Sessions:
    """Issues, checks and revokes the dashboard's session cookies."""

    app: App
    secret: bytes
    lifetime: float = DEFAULT_SESSION_LIFETIME
    _revoked: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lifetime) and self.lifetime > 0):
            raise ValueError(f"a session lifetime is a number of seconds > 0, not {self.lifetime}")

    def _signature(self, session_id: str, expires_at: int) -> str:
        message = f"session\0{session_id}\0{expires_at}".encode()
        digest = hmac.new(self.secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self) -> str:
        """A new session's cookie value, good for ``lifetime`` seconds from now."""
        session_id = secrets.token_urlsafe(24)
        expires_at = math.ceil(self.app.clock.time() + self.lifetime)
        return f"{session_id}.{expires_at}.{self._signature(session_id, expires_at)}"

    def _parse(self, cookie: str) -> tuple[str, int] | None:
        """The session id and end of a cookie this server signed, else ``None``."""
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
            return None
        session_id, expires_at = parts[0], int(parts[1])
        if not secrets_equal(parts[2], self._signature(session_id, expires_at)):
            return None
        return session_id, expires_at

    def check(self, cookie: str) -> SessionCheck:
        """Whether ``cookie`` opens a session now.

        Reads the result store (one round trip) once the signature and the expiry
        passed; its errors (an unreachable store) propagate, so a revoked session
        is never let in because the revocation could not be read.
        """
        parsed = self._parse(cookie)
        if parsed is None:
            return SessionCheck.INVALID
        session_id, expires_at = parsed
        now = self.app.clock.time()
        if now >= expires_at:
            return SessionCheck.EXPIRED
        with self._lock:
            if session_id in self._revoked:
                return SessionCheck.REVOKED
        mark = None  # a result store without keys: the in-process set is all there is
        if self.app.results.keeps(Capability.KEYS):
            [mark] = self.app.results.get_keys([session_revoked_key(session_id)])
        return SessionCheck.VALID if mark is None else SessionCheck.REVOKED

    def revoke(self, cookie: str) -> bool:
        """End the session of ``cookie`` for every process; ``False`` if it opened none."""
        parsed = self._parse(cookie)
        if parsed is None:
            return False
        session_id, expires_at = parsed
        now = self.app.clock.time()
        if now >= expires_at:
            return False
        with self._lock:
            self._revoked = {s: end for s, end in self._revoked.items() if end > now}
            self._revoked[session_id] = float(expires_at)
        # A result store without keys: the session is revoked in this process only
        # (docs/dashboard.md says so).
        if self.app.results.keeps(Capability.KEYS):
            self.app.results.set_key(session_revoked_key(session_id), b"1", float(expires_at))
        return True
