"""Bounded error text: cap_text, and the CLI and HTTP API showing a huge error bounded.

The records here are written straight into the stores, as an old record or another
producer would have left them: what is shown must be bounded whatever was stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sleipnir import App
from sleipnir.bounded import ERROR_TEXT_LIMIT, cap_text
from sleipnir.brokers.base import Nack
from sleipnir.results import JobState, ResultRecord

from .conftest import CLI_MODULE, CliApp, cli_app, serve_api

HEAD = "ValueError: the upstream answered with a body of "
TAIL = "the innermost frame, where it was raised"
# 20 MB: a first line of 12 MB (a message with a response body in it), then 8 MB of frames.
HUGE = (
    HEAD
    + "b" * 12_000_000
    + "\nTraceback (most recent call last):\n"
    + "".join(f'  File "app.py", line {i}, in step\n' for i in range(240_000))
    + TAIL
)


# -- cap_text ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "short", "x" * 1000, "a\nb\n" * 100])
def test_short_text_is_unchanged(text: str) -> None:
    assert cap_text(text, limit=1000) == text


def test_text_of_exactly_the_limit_is_unchanged() -> None:
    text = "y" * ERROR_TEXT_LIMIT
    assert cap_text(text) is text


@pytest.mark.parametrize("limit", [200, 201, 1000, 4096, ERROR_TEXT_LIMIT])
@pytest.mark.parametrize("size", [1, 2, 500, 70_000, 3_000_000])
def test_the_limit_is_respected_and_head_tail_and_a_note_are_kept(limit: int, size: int) -> None:
    text = "H" * 20 + "m" * (limit + size) + "T" * 20
    capped = cap_text(text, limit)
    assert len(capped) <= limit
    assert capped.startswith("H" * 20)
    assert capped.endswith("T" * 20)
    note = re.search(r"\n\[\.\.\. ([\d,]+) characters cut \.\.\.\]\n", capped)
    assert note is not None
    cut = int(note.group(1).replace(",", ""))
    assert len(capped) - len(note.group(0)) + cut == len(text)  # the note says what is missing


def test_the_default_limit_is_64_kib_of_characters() -> None:
    capped = cap_text(HUGE)
    assert ERROR_TEXT_LIMIT == 64 * 1024
    assert ERROR_TEXT_LIMIT - 100 < len(capped) <= ERROR_TEXT_LIMIT
    assert capped.startswith(HEAD) and capped.endswith(TAIL)
    assert "characters cut" in capped


# -- where errors are shown -------------------------------------------------------------------


def bury(app: App, task: str, error: str) -> str:
    """Store one job of ``task`` as a dead letter and a failed record, both with ``error``."""
    handle = app.get_task(task).delay(1, 2)
    (reservation,) = app.broker.reserve(["default"], 1, 30.0)
    assert app.broker.nack([Nack(reservation, None, error)]) == [True]
    now = app.clock.time()
    record = ResultRecord(
        handle.id, JobState.FAILED, task, "default", 1, now, now + 3600.0, error=error
    )
    app.results.put([record])
    return handle.id


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliApp]:
    yield from cli_app(CLI_MODULE, tmp_path, monkeypatch)


def test_dead_list_prints_one_short_line_per_letter(cli: CliApp) -> None:
    ids = [bury(cli.app, "add", HUGE), bury(cli.app, "add", "Fail: out of stock")]
    result = cli("dead", "list", "APP")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(ids[0]) and len(lines[0]) < 400
    assert HEAD in lines[0]
    assert lines[0].endswith(f"[... {len(HUGE) - 200:,} more characters]")
    assert lines[1].startswith(ids[1]) and lines[1].endswith("  Fail: out of stock")


def test_dead_list_full_and_json_print_the_reason_capped(cli: CliApp) -> None:
    job_id = bury(cli.app, "add", HUGE)
    full = cli("dead", "list", "APP", "--full")
    assert full.exit_code == 0, full.output
    assert full.output.startswith(job_id)
    assert len(full.output) < ERROR_TEXT_LIMIT + 10_000  # the capped text and its indent
    assert f"    {HEAD}" in full.output and full.output.rstrip().endswith(f"    {TAIL}")
    assert "characters cut" in full.output
    as_json = cli("dead", "list", "APP", "--json")
    (line,) = as_json.output.splitlines()
    reason = json.loads(line)["reason"]
    assert reason == cap_text(HUGE)
    assert len(reason) <= ERROR_TEXT_LIMIT


def test_job_shows_the_error_bounded(cli: CliApp) -> None:
    job_id = bury(cli.app, "add", HUGE)
    short = cli("job", "APP", job_id)
    assert short.exit_code == 0, short.output
    assert len(short.output) < 1000
    (error_line,) = [line for line in short.output.splitlines() if "error" in line]
    assert HEAD in error_line and "more characters]" in error_line
    full = cli("job", "APP", job_id, "--full")
    assert len(full.output) < ERROR_TEXT_LIMIT + 10_000
    assert f"    {HEAD}" in full.output and full.output.rstrip().endswith(TAIL)
    as_json = cli("job", "APP", job_id, "--json")
    assert json.loads(as_json.output)["error"] == cap_text(HUGE)


def test_a_short_error_is_shown_whole(cli: CliApp) -> None:
    job_id = bury(cli.app, "add", "Fail: out of stock")
    assert "  error     Fail: out of stock\n" in cli("job", "APP", job_id).output
    assert json.loads(cli("job", "APP", job_id, "--json").output)["error"] == "Fail: out of stock"


@pytest.fixture
def http(app: App) -> Iterator[httpx.Client]:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    yield from serve_api(app)


def test_the_api_returns_the_error_capped(app: App, http: httpx.Client) -> None:
    job_id = bury(app, "add", HUGE)
    r = http.get(f"/api/jobs/{job_id}")
    assert r.status_code == 200
    assert len(r.content) < ERROR_TEXT_LIMIT + 10_000
    assert r.json()["error"] == cap_text(HUGE)
    r = http.get("/api/dead")
    assert r.status_code == 200
    assert len(r.content) < ERROR_TEXT_LIMIT + 10_000
    (letter,) = r.json()["dead"]
    assert (letter["id"], letter["reason"]) == (job_id, cap_text(HUGE))
