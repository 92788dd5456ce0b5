"""The ``sleipnir`` command, run as a real process against each broker."""

from __future__ import annotations

import json

import pytest

from .conftest import Sandbox, parse_queues

pytestmark = pytest.mark.integration


def test_burst_worker_exits_0_on_an_empty_queue(sandbox: Sandbox) -> None:
    w = sandbox.worker("burst", "--burst")
    assert w.wait_exit(20) == 0, w.output()
    assert "0 succeeded, 0 failed" in w.stderr()
    assert sandbox.runs() == {}


def test_enqueue_queues_and_dead_list_as_subprocesses(sandbox: Sandbox) -> None:
    ok = sandbox.cli("enqueue", sandbox.spec, "record", "--args", '["cli-ok"]')
    assert ok.returncode == 0, ok.stderr
    bad = sandbox.cli("enqueue", sandbox.spec, "boom", "--args", '["cli-bad"]')
    assert bad.returncode == 0, bad.stderr
    ok_id, bad_id = ok.stdout.strip(), bad.stdout.strip()
    assert len(ok_id) == len(bad_id) == 26 and ok_id != bad_id

    unknown = sandbox.cli("enqueue", sandbox.spec, "no_such_task")
    assert unknown.returncode != 0
    assert "unknown task 'no_such_task'" in unknown.stderr
    wrong = sandbox.cli("enqueue", sandbox.spec, "record", "--args", "[1, 2, 3]")
    assert wrong.returncode != 0
    assert "arguments do not fit" in wrong.stderr

    before = sandbox.cli("queues", sandbox.spec)
    assert before.returncode == 0, before.stderr
    assert parse_queues(before.stdout)["default"]["ready"] == 2

    w = sandbox.worker("burst", "--burst", "-c", "2")
    assert w.wait_exit(20) == 0, w.output()
    assert sandbox.app.status(ok_id) == "succeeded"
    assert sandbox.app.status(bad_id) == "failed"
    assert sandbox.runs() == {"cli-ok": 1, "cli-bad": 1}  # retries=0: one run only

    after = sandbox.cli("queues", sandbox.spec)
    assert after.returncode == 0, after.stderr
    assert parse_queues(after.stdout)["default"] == {
        "ready": 0,
        "scheduled": 0,
        "running": 0,
        "failed": 1,
    }

    listed = sandbox.cli("dead", "list", sandbox.spec)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 1, listed.stdout
    assert bad_id in lines[0]
    assert " boom " in lines[0]
    assert "ValueError: boom cli-bad: this task always fails" in lines[0]

    as_json = sandbox.cli("dead", "list", sandbox.spec, "--json")
    assert as_json.returncode == 0, as_json.stderr
    (letter,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert letter["id"] == bad_id
    assert letter["task"] == "boom"
    assert letter["queue"] == "default"
    assert letter["attempt"] == 1
    assert letter["reason"].startswith("ValueError: boom cli-bad: this task always fails")
    assert "Traceback" in letter["reason"]
    assert "no retries left" in letter["reason"]
