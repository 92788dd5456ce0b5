"""Dashboard sessions: logout revokes, expiry, constant-time checks, and the token's length."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from sleipnir import App, ConfigurationError
from sleipnir.cli import main
from sleipnir.testing import FakeClock
from sleipnir.web import check_bind, create_app
from sleipnir.web.server import SESSION_COOKIE

from .conftest import TOKEN, Server, build_app, run_server


def log_in(server: Server) -> httpx.Client:
    """A browser-like client that logged in through the form."""
    browser = server.anonymous()
    r = browser.post("/login", data={"token": TOKEN, "next": "/queues"})
    assert (r.status_code, r.headers["location"]) == (303, "/queues")
    return browser


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def test_the_session_cookie_is_httponly_strict_and_lasts_the_lifetime(server: Server) -> None:
    r = server.anonymous().post("/login", data={"token": TOKEN})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "max-age=43200" in cookie  # 12 h by default
    assert "secure" not in cookie  # plain http here; set when the server speaks https


def test_logout_revokes_the_session_even_for_a_copy_of_its_cookie(
    server: Server, tmp_path: Path
) -> None:
    browser = log_in(server)
    cookie = browser.cookies[SESSION_COOKIE]
    thief = server.anonymous(cookies={SESSION_COOKIE: cookie})
    assert thief.get("/queues").status_code == 200
    # Another server process with the same token and result store takes the cookie too...
    for other in run_server(build_app(server.app.broker_url)):
        other_thief = other.anonymous(cookies={SESSION_COOKIE: cookie})
        assert other_thief.get("/api/queues").status_code == 200

        page = browser.get("/queues").text
        r = browser.post("/logout", data={"csrf": csrf_of(page)})
        assert (r.status_code, r.headers["location"]) == (303, "/login")

        # ...and refuses it after the logout, as this one does.
        assert other_thief.get("/api/queues").status_code == 401
    replayed = thief.get("/queues")
    assert replayed.status_code == 401
    assert 'name="token"' in replayed.text and "ended by logging out" in replayed.text
    assert thief.get("/api/queues").status_code == 401
    assert browser.get("/queues").status_code == 401
    # Logging in again opens a new session.
    assert log_in(server).get("/queues").status_code == 200


@pytest.fixture
def clocked_server(tmp_path: Path) -> Iterator[tuple[Server, FakeClock]]:
    """A server whose App runs on a fake clock, with 60-second sessions."""
    clock = FakeClock()
    app = App(broker=f"sqlite:///{tmp_path}/jobs.db", clock=clock)
    for server in run_server(app, session_lifetime=60.0):
        yield server, clock


def test_a_session_is_refused_after_its_lifetime(
    clocked_server: tuple[Server, FakeClock],
) -> None:
    server, clock = clocked_server
    browser = log_in(server)
    cookie = browser.cookies[SESSION_COOKIE]
    clock.advance(59)
    assert browser.get("/queues").status_code == 200
    clock.advance(1)
    page = browser.get("/queues")
    assert page.status_code == 401
    assert 'name="token"' in page.text and "session expired" in page.text
    assert SESSION_COOKIE not in browser.cookies  # the browser was told to drop it
    stale = server.anonymous(cookies={SESSION_COOKIE: cookie})
    assert stale.get("/api/queues").status_code == 401
    assert "session expired" in stale.get("/api/queues").json()["error"]
    assert log_in(server).get("/queues").status_code == 200


def test_forged_session_cookies_are_refused(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cookie = log_in(server).cookies[SESSION_COOKIE]
    session_id, expires_at, signature = cookie.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    forgeries = [
        f"{session_id}.{int(expires_at) + 3600}.{signature}",  # a longer life
        f"{session_id}.{expires_at}.{flipped}",  # all but the last character right
        f"{session_id}.{expires_at}.{signature[:-1]}",  # a prefix of the signature
        f"{session_id}.{expires_at}.",
        "a.b.c",
        "x",
    ]
    for other in run_server(build_app(f"sqlite:///{tmp_path}/other.db"), token="another-token-0"):
        forgeries.append(log_in_with(other, "another-token-0"))
    for forged in forgeries:
        client = server.anonymous(cookies={SESSION_COOKIE: forged})
        assert client.get("/api/queues").status_code == 401, forged
    near_token = server.anonymous(headers={"Authorization": f"Bearer {TOKEN[:-1]}X"})
    assert near_token.get("/api/queues").status_code == 401

    # Both secrets a client sends are compared in constant time.
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert server.anonymous(cookies={SESSION_COOKIE: cookie}).get("/queues").status_code == 200
    assert server.client.get("/api/queues").status_code == 200
    assert (signature.encode(), signature.encode()) in compared
    assert (TOKEN.encode(), TOKEN.encode()) in compared


def log_in_with(server: Server, token: str) -> str:
    r = server.anonymous().post("/login", data={"token": token})
    assert r.status_code == 303
    value = r.cookies[SESSION_COOKIE]
    assert isinstance(value, str)
    return value


# -- the token's length -----------------------------------------------------------------------


def test_a_short_token_is_refused_for_a_public_address() -> None:
    for weak in ("", "   ", "x", "a" * 15, " " * 20):
        with pytest.raises(ConfigurationError, match="SLEIPNIR_API_TOKEN"):
            check_bind("0.0.0.0", weak)
    with pytest.raises(ConfigurationError, match="at least 16 characters"):
        check_bind("192.0.2.10", "a" * 15)
    check_bind("0.0.0.0", "a" * 16)
    check_bind("::", TOKEN)


def test_a_short_token_or_none_is_accepted_on_loopback(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        for token in (None, "", "x", "a" * 15):
            check_bind(host, token)
    for server in run_server(build_app(f"sqlite:///{tmp_path}/jobs.db"), token="x"):
        assert server.client.get("/api/queues").status_code == 200
        assert server.anonymous().get("/api/queues").status_code == 401


def test_the_web_command_refuses_a_short_token_for_a_public_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import uuid

    name = f"sleipnir_web_token_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(
        f"from sleipnir import App\napp = App(broker='sqlite:///{tmp_path}/j.db')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SLEIPNIR_API_TOKEN", "short")
    try:
        result = CliRunner().invoke(main, ["web", name, "--host", "0.0.0.0"])
    finally:
        loaded = sys.modules.pop(name, None)
        if loaded is not None:
            loaded.app.close()
    assert result.exit_code == 1
    assert "SLEIPNIR_API_TOKEN of 5 character(s)" in result.output
    assert "at least 16 characters" in result.output


def test_an_app_served_by_hand_answers_a_public_address_only_with_a_strong_token(
    tmp_path: Path,
) -> None:
    """``create_app`` does not know where it is served; each request says where it came in."""

    app = build_app(f"sqlite:///{tmp_path}/jobs.db")

    async def status(token: str | None, host: str) -> int:
        transport = httpx.ASGITransport(app=create_app(app, token=token))
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            return (await client.get("/healthz", headers={"Host": "localhost"})).status_code

    assert asyncio.run(status(None, "10.0.0.5:8000")) == 403
    assert asyncio.run(status("short", "10.0.0.5:8000")) == 403
    assert asyncio.run(status(TOKEN, "10.0.0.5:8000")) == 200
    assert asyncio.run(status(None, "127.0.0.1:8000")) == 200
    assert asyncio.run(status("short", "127.0.0.1:8000")) == 200
    app.close()
