"""The dashboard in a real browser: Playwright driving Debian's Chromium, headless.

``make browser`` (a prerequisite of ``make test``) installs Chromium with apt when
it is missing. Without it this test is skipped with a loud line locally and
fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import IN_CI
from .conftest import TOKEN, Server, build_app, run_server

CHROMIUM = os.environ.get("SLEIPNIR_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _need_browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[dev]')"
    else:
        if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
            return sync_playwright
        missing = f"Chromium is not at {CHROMIUM} (make browser installs it)"
    if IN_CI:
        pytest.fail(f"{missing}; CI must run the browser test", pytrace=False)
    print(f"\n*** SKIPPING THE BROWSER TEST: {missing} ***", file=sys.stderr)
    pytest.skip(missing)


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[tuple[Any, Server]]:
    sync_playwright = _need_browser()
    for server in run_server(build_app(f"sqlite:///{tmp_path}/jobs.db")):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                yield context.new_page(), server
                context.close()
            finally:
                browser.close()


def test_dashboard_shows_queue_counts_and_retries_a_dead_job_by_clicking(
    browser_page: tuple[Any, Server], tmp_path: Path
) -> None:
    page, server = browser_page
    for i in range(3):
        server.client.post("/api/jobs", json={"task": "add", "args": [i, i]}).raise_for_status()
    server.client.post("/api/jobs", json={"task": "refuse", "args": ["no"]}).raise_for_status()
    server.work()  # runs the adds, dead-letters the refusal, sends heartbeats
    for i in range(2):
        server.client.post("/api/jobs", json={"task": "add", "args": [i, 9]}).raise_for_status()

    # Log in through the form, as a person would.
    page.goto(f"{server.url}/")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")
    default_row = page.locator('#queues tr[data-queue="default"]')
    assert default_row.locator('[data-count="ready"]').inner_text() == "2"
    assert page.locator('#queues tr[data-queue="mail"] [data-count="dead"]').inner_text() == "1"
    assert page.locator("svg.chart").count() == 2
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

    page.click("text=Dead letters")
    page.wait_for_url(f"{server.url}/dead")
    [dead] = server.app.broker.dead_letters()
    card = page.locator(f'table.dead[data-id="{dead.id}"]')
    assert "Fail: no" in card.inner_text()
    card.locator("button[name=retry]").click()
    page.wait_for_selector("#message")
    assert "1 job(s) back on their queues" in page.locator("#message").inner_text()
    assert page.locator("#no-dead").is_visible()
    page.screenshot(path=str(tmp_path / "dead-after-retry.png"), full_page=True)
    assert server.app.broker.dead_letters() == []
    assert server.app.status(dead.id) == "queued"

    page.goto(f"{server.url}/hosts")
    assert page.locator("svg.chart").count() >= 1
    page.screenshot(path=str(tmp_path / "hosts.png"), full_page=True)
    assert (tmp_path / "overview.png").stat().st_size > 1000
    assert (tmp_path / "dead-after-retry.png").stat().st_size > 1000
