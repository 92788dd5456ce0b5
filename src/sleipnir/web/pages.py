"""What every dashboard page shares: the templates and their filters, forms with their CSRF
check, the login and error pages.
"""

from __future__ import annotations

import math
import time
from typing import Any
from urllib.parse import parse_qs

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..views import format_progress
from . import api, http
from .sessions import SESSION_COOKIE, secrets_equal
from .state import WebState

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("sleipnir.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _progress(progress: dict[str, Any] | None) -> str:
    return format_progress(None if progress is None else (progress["done"], progress["total"]))


def _state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


def _render(
    web: WebState,
    name: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    html = _env.get_template(name).render(
        csrf=web.csrf_token, has_token=bool(web.token), now=web.app.clock.time(), **context
    )
    return HTMLResponse(html, status_code, headers=headers)


def login_page(
    web: WebState, *, status_code: int = 200, next_path: str = "/", error: str | None = None
) -> HTMLResponse:
    """The login form (a 401 answer when a page was asked for without a valid session)."""
    return _render(
        web, "login.html", status_code, {"WWW-Authenticate": 'Bearer realm="sleipnir"'},
        page="login", next_path=next_path if next_path.startswith("/") else "/", error=error,
    )  # fmt: skip


def forget_session(response: Response, https: bool) -> None:
    """Make the browser drop its session cookie."""
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict", secure=https)


def error_page(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """An error as a page, for the dashboard's routes."""
    return _render(
        _state(request), "error.html", status, headers, page="", status=status, message=message
    )


class Form(dict[str, list[str]]):
    """A posted ``application/x-www-form-urlencoded`` form: name -> values."""

    def get_one(self, name: str) -> str | None:
        """The field's first value, or ``None``."""
        values = self.get(name)
        return values[0] if values else None


async def read_form(request: Request, limit: int = 64 * 1024) -> Form:
    """Parse a URL-encoded form body of at most ``limit`` bytes (the dashboard's only kind)."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise api.ApiError(415, "send the form as application/x-www-form-urlencoded")
    body = await http.read_body(request, limit)
    try:
        return Form(parse_qs(body.decode(), keep_blank_values=True, max_num_fields=2000))
    except (UnicodeDecodeError, ValueError) as exc:
        raise api.ApiError(400, f"malformed form: {exc}") from None


async def _form(request: Request, web: WebState) -> Form:
    """The posted form, after its CSRF token was checked (403 if it does not match)."""
    form = await read_form(request)
    given = form.get_one("csrf")
    if given is None or not secrets_equal(given, web.csrf_token):
        raise api.ApiError(403, "the form's CSRF token is missing or wrong; reload the page")
    return form
