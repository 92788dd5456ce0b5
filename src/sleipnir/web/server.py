"""The Starlette app: routes, the guard in front of them, error pages, and how to serve it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..app import App
from ..errors import BrokerError, SleipnirError
from . import api, dashboard
from .sessions import DEFAULT_SESSION_LIFETIME, SESSION_COOKIE, SessionCheck
from .state import MIN_TOKEN_LENGTH, WebState, check_bind, is_loopback, token_is_strong

__all__ = ["SESSION_COOKIE", "create_app", "serve"]

log = logging.getLogger("sleipnir.web")

_OPEN_PATHS = {"/healthz", "/login"}


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _arrived_on_public_address(scope: Scope) -> bool:
    """True when the connection came in on an IP address other than loopback.

    ``scope["server"]`` is the listening socket's own address; a Unix socket, or a
    server that does not say, counts as local.
    """
    server = scope.get("server")
    if not server:
        return False
    try:
        return not ipaddress.ip_address(str(server[0]).strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """Authentication and cross-site checks in front of every route.

    * With a token: every path but ``/healthz`` and ``/login`` needs
      ``Authorization: Bearer <token>`` or the session cookie a login sets (signed,
      not expired, not logged out: :mod:`.sessions`); 401 otherwise.
    * Without a token (the server then listens on loopback only): requests must
      name a loopback host, so a web page cannot reach the server by DNS rebinding.
    * Without a token of 16 characters or more, a request that came in on an
      address other than loopback is refused: :func:`check_bind` stops ``serve`` from
      binding one, and this stops an app built with ``create_app`` and served by
      hand.
    * A browser's state-changing request (not GET/HEAD) from another site is
      refused by its ``Sec-Fetch-Site``, ``Origin`` or ``Referer``; dashboard forms
      also carry a CSRF token, checked by the form handlers.
    """

    def __init__(self, app: ASGIApp, web: WebState) -> None:
        self.app = app
        self.web = web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope["path"]
        method: str = scope["method"]
        if not self.web.token and not is_loopback(_host_name(headers.get("host", ""))):
            await self._refuse(scope, receive, send, 403, "Host not allowed without a token")
            return
        if not token_is_strong(self.web.token) and _arrived_on_public_address(scope):
            await self._refuse(
                scope, receive, send, 403,
                f"this server has no API token of {MIN_TOKEN_LENGTH} characters or more, "
                "so it answers on loopback addresses only",
            )  # fmt: skip
            return
        if path not in _OPEN_PATHS and self.web.token:
            try:
                verdict = await self._authorize(headers)
            except SleipnirError as exc:
                # The result store that holds logouts is unreachable: let no cookie
                # in rather than one that may have been revoked.
                log.warning("session check failed: %s", exc)
                await self._refuse(
                    scope, receive, send, 503, f"cannot check the session: {exc}",
                    {"Retry-After": "5"},
                )  # fmt: skip
                return
            if verdict is not SessionCheck.VALID:
                await self._unauthorized(scope, receive, send, verdict)
                return
        if method not in ("GET", "HEAD", "OPTIONS") and not self._same_origin(headers):
            await self._refuse(scope, receive, send, 403, "cross-site request refused")
            return
        await self.app(scope, receive, send)

    async def _authorize(self, headers: Headers) -> SessionCheck:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.web.token_ok(given.strip()):
            return SessionCheck.VALID
        cookie = Request({"type": "http", "headers": headers.raw}).cookies.get(SESSION_COOKIE)
        if cookie is None:
            return SessionCheck.INVALID
        return await run_in_threadpool(self.web.sessions.check, cookie)

    @staticmethod
    def _same_origin(headers: Headers) -> bool:
        site = headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        host = headers.get("host", "")
        for name in ("origin", "referer"):
            value = headers.get(name)
            if value:
                return value != "null" and urlsplit(value).netloc == host
        return True  # no browser headers at all: not a browser, e.g. curl with the token

    async def _unauthorized(
        self, scope: Scope, receive: Receive, send: Send, verdict: SessionCheck
    ) -> None:
        path: str = scope["path"]
        ended = {
            SessionCheck.EXPIRED: "your session expired",
            SessionCheck.REVOKED: "this session was ended by logging out",
        }.get(verdict)
        response: Response
        if path.startswith("/api/") or path == "/metrics":
            message = "missing or wrong Authorization: Bearer <token>"
            response = api.json_response(
                {"error": f"{ended}; {message}" if ended else message},
                401,
                {"WWW-Authenticate": 'Bearer realm="sleipnir"'},
            )
        else:
            response = dashboard.login_page(
                self.web,
                status_code=401,
                next_path=path,
                error=f"{ended.capitalize()}; log in again." if ended else None,
            )
        if verdict is not SessionCheck.INVALID:
            dashboard.forget_session(response, scope.get("scheme") == "https")
        await response(scope, receive, send)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        await api.json_response({"error": message}, status, headers)(scope, receive, send)


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/api/") or path in ("/metrics", "/healthz")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, api.ApiError)
    if _wants_json(request):
        return api.json_response({"error": exc.message}, exc.status, exc.headers)
    return dashboard.error_page(request, exc.status, exc.message, exc.headers)


async def _broker_error(request: Request, exc: Exception) -> Response:
    # Unreachable (or failing) broker: never a 2xx, and tell clients when to retry.
    log.warning("%s %s: broker error: %s", request.method, request.url.path, exc)
    message = f"the broker is unavailable: {exc}"
    headers = {"Retry-After": "5"}
    if _wants_json(request):
        return api.json_response({"error": message}, 503, headers)
    return dashboard.error_page(request, 503, message, headers)


def create_app(
    app: App,
    *,
    token: str | None = None,
    max_body_bytes: int | None = None,
    idempotency_window: float = 24 * 3600.0,
    sample_every: float = 10.0,
    session_lifetime: float = DEFAULT_SESSION_LIFETIME,
) -> Starlette:
    """The ASGI app: the JSON API under ``/api``, ``/metrics``, ``/healthz`` and the dashboard.

    ``token`` is what clients send as ``Authorization: Bearer <token>`` (``None``:
    no authentication, for a server on loopback only). ``max_body_bytes`` bounds
    request bodies (default: the App's payload limit plus 4 KiB of JSON around it).
    ``idempotency_window`` is how long (seconds) an ``Idempotency-Key`` names its job.
    ``session_lifetime`` is how long (seconds) a dashboard login lasts; after it the
    session cookie is refused and the browser is sent to the login form.
    """
    web = WebState(
        app=app,
        token=token or None,
        max_body_bytes=max_body_bytes or app.max_payload_bytes + 4096,
        idempotency_window=idempotency_window,
        sample_every=sample_every,
        session_lifetime=session_lifetime,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async def sample() -> None:
            # Keeps the oldest-ready plot going while nobody looks at the dashboard.
            while True:
                with contextlib.suppress(SleipnirError):
                    await run_in_threadpool(web.stats)
                await asyncio.sleep(web.sample_every)

        def open_stores() -> None:
            # Opened once here rather than by the first requests racing on their threads.
            with contextlib.suppress(SleipnirError):
                _ = app.broker, app.results

        await run_in_threadpool(open_stores)
        sampler = asyncio.create_task(sample())
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await run_in_threadpool(web.batcher.close)

    starlette = Starlette(
        routes=[*api.routes(), *dashboard.routes()],
        exception_handlers={api.ApiError: _api_error, BrokerError: _broker_error},
        lifespan=lifespan,
    )
    starlette.state.web = web
    starlette.add_middleware(Guard, web=web)
    return starlette


def serve(
    app: App,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    access_log: bool = True,
    **options: Any,
) -> None:
    """Serve the web app with uvicorn until interrupted.

    The token defaults to ``SLEIPNIR_API_TOKEN``; without one, or with one shorter
    than 16 characters, only a loopback address is accepted
    (:class:`~sleipnir.ConfigurationError` otherwise).
    """
    import uvicorn

    token = token if token is not None else os.environ.get("SLEIPNIR_API_TOKEN") or None
    check_bind(host, token)
    asgi = create_app(app, token=token, **options)
    uvicorn.run(
        asgi, host=host, port=port, log_level="info", access_log=access_log, proxy_headers=False
    )
