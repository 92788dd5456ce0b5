"""The ``sleipnir`` command in-process, on an App module written into tmp_path.

The ``worker`` command ends with ``os._exit``, so these tests run the Worker class
instead (``cli.work()``); the command itself is covered by the integration tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from sleipnir import App
from sleipnir.cli import main
from sleipnir.monitor import Heartbeat, RunningJob, sample_of
from sleipnir.results import WorkerBeat
from sleipnir.schedule import Scheduler

from .conftest import CliApp, cli_app


def queue_row(output: str, queue: str) -> dict[str, int]:
    """The counts of one queue in the ``queues`` table."""
    header, *rows = output.split("\n\n", 1)[0].splitlines()
    assert header.split()[:5] == ["queue", "ready", "scheduled", "running", "failed"]
    for row in rows:
        name, ready, scheduled, running, failed, *_ = row.split()
        if name == queue:
            return {"ready": int(ready), "scheduled": int(scheduled), "running": int(running),
                    "failed": int(failed)}  # fmt: skip
    raise AssertionError(f"no row for {queue!r} in:\n{output}")


def test_enqueue_prints_the_id_of_the_stored_job(cli: CliApp) -> None:
    result = cli("enqueue", "APP", "add", "--args", "[2, 3]")
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    assert len(job_id) == 26
    assert cli.app.status(job_id) == "queued"
    cli.work()
    assert cli.app.job(job_id).result(timeout=1.0) == 5


def test_enqueue_takes_kwargs_queue_priority_and_delay(cli: CliApp) -> None:
    result = cli(
        "enqueue", "APP:app", "add", "--kwargs", '{"a": 1, "b": 2}',
        "--queue", "urgent", "--priority", "7", "--delay", "600",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info = cli.app.broker.job_info(result.stdout.strip())
    assert info is not None and info.queue == "urgent"
    assert cli.app.status(info.id) == "scheduled"


def test_enqueue_with_args_that_are_not_json_exits_2_and_stores_nothing(cli: CliApp) -> None:
    result = cli("enqueue", "APP", "add", "--args", "[1,")
    assert result.exit_code == 2
    assert "not JSON" in result.stderr
    result = cli("enqueue", "APP", "add", "--args", '{"a": 1}')
    assert result.exit_code == 2
    assert "--args must be a JSON array" in result.stderr
    assert cli.app.broker.stats() == []


def test_enqueue_of_an_unknown_task_exits_1_naming_the_known_ones(cli: CliApp) -> None:
    result = cli("enqueue", "APP", "nope")
    assert result.exit_code == 1
    assert "Error: unknown task 'nope' (registered: add, refuse)" in result.stderr
    assert result.stdout == ""
    assert cli.app.broker.stats() == []


def test_enqueue_with_arguments_that_do_not_fit_exits_1(cli: CliApp) -> None:
    result = cli("enqueue", "APP", "add", "--args", "[1, 2, 3]")
    assert result.exit_code == 1
    assert "arguments do not fit add(" in result.stderr
    assert cli.app.broker.stats() == []


def test_an_app_that_cannot_be_loaded_is_a_usage_error(cli: CliApp) -> None:
    missing = cli("queues", "no_such_module_for_sleipnir_tests")
    assert missing.exit_code == 2
    assert "cannot import 'no_such_module_for_sleipnir_tests'" in missing.stderr
    not_an_app = cli("queues", "APP:add")
    assert not_an_app.exit_code == 2
    assert "is not a sleipnir.App" in not_an_app.stderr


def test_queues_shows_the_counts(cli: CliApp) -> None:
    empty = cli("queues", "APP")
    assert empty.exit_code == 0
    assert "(no queues yet)" in empty.stdout
    for args in ("[1, 2]", "[3, 4]"):
        assert cli("enqueue", "APP", "add", "--args", args).exit_code == 0
    assert cli("enqueue", "APP", "add", "--args", "[5, 6]", "--delay", "600").exit_code == 0
    assert cli("enqueue", "APP", "refuse", "--args", '["no"]').exit_code == 0
    before = cli("queues", "APP")
    assert before.exit_code == 0
    assert queue_row(before.stdout, "default") == {
        "ready": 3, "scheduled": 1, "running": 0, "failed": 0
    }  # fmt: skip
    cli.work()
    after = cli("queues", "APP")
    assert queue_row(after.stdout, "default") == {
        "ready": 0, "scheduled": 1, "running": 0, "failed": 1
    }  # fmt: skip


def test_queues_shows_when_the_next_scheduled_job_comes_due(cli: CliApp) -> None:
    assert cli("enqueue", "APP", "add", "--args", "[1, 2]", "--queue", "now").exit_code == 0
    assert cli("enqueue", "APP", "add", "--args", "[1, 2]", "--delay", "600").exit_code == 0
    assert cli("enqueue", "APP", "add", "--args", "[3, 4]", "--delay", "900").exit_code == 0
    out = cli("queues", "APP").stdout
    header, *rows = out.split("\n\n", 1)[0].splitlines()
    assert header.split()[5:] == ["oldest", "ready", "next", "scheduled"]
    by_queue = {row.split()[0]: row for row in rows}
    # The soonest of the two delayed jobs, 600 s away less the time the commands took.
    assert re.search(r"  -\s+in (9m [0-5]\ds|10m 00s)$", by_queue["default"]), out
    assert re.search(r"s ago\s+-$", by_queue["now"]), out


def test_dead_list_shows_the_reason(cli: CliApp) -> None:
    job_id = cli("enqueue", "APP", "refuse", "--args", '["card declined"]').stdout.strip()
    cli.work()
    listed = cli("dead", "list", "APP")
    assert listed.exit_code == 0
    (line,) = listed.stdout.splitlines()
    assert line.startswith(job_id)
    assert "refuse" in line and "attempt 1" in line
    assert line.endswith("Fail: card declined")
    (as_json,) = cli("dead", "list", "APP", "--json").stdout.splitlines()
    record = json.loads(as_json)
    assert (record["id"], record["task"], record["reason"]) == (
        job_id, "refuse", "Fail: card declined"
    )  # fmt: skip


def test_dead_list_with_none_says_so(cli: CliApp) -> None:
    result = cli("dead", "list", "APP")
    assert result.exit_code == 0
    assert result.stdout.strip() == "no dead letters"


def test_dead_retry_all_moves_them_back(cli: CliApp) -> None:
    ids = [cli("enqueue", "APP", "refuse", "--args", f'["{i}"]').stdout.strip() for i in "ab"]
    cli.work()
    assert queue_row(cli("queues", "APP").stdout, "default")["failed"] == 2
    result = cli("dead", "retry", "APP", "--all")
    assert result.exit_code == 0
    assert "2 job(s) back on their queues" in result.stdout
    assert [cli.app.status(i) for i in ids] == ["queued", "queued"]
    assert queue_row(cli("queues", "APP").stdout, "default") == {
        "ready": 2, "scheduled": 0, "running": 0, "failed": 0
    }  # fmt: skip
    assert cli("dead", "list", "APP").stdout.strip() == "no dead letters"


def test_dead_retry_by_id_reports_ids_that_are_not_dead_letters(cli: CliApp) -> None:
    job_id = cli("enqueue", "APP", "refuse", "--args", '["x"]').stdout.strip()
    cli.work()
    result = cli("dead", "retry", "APP", job_id, "NOT-A-JOB")
    assert result.exit_code == 1
    assert "1 job(s) back on their queues" in result.stdout
    assert "not dead letters: NOT-A-JOB" in result.stderr
    assert cli.app.status(job_id) == "queued"


def test_dead_retry_without_ids_or_all_is_a_usage_error(cli: CliApp) -> None:
    result = cli("dead", "retry", "APP")
    assert result.exit_code == 2
    assert "give job ids or --all" in result.stderr


def test_dead_purge_yes_deletes_them(cli: CliApp) -> None:
    for reason in ("x", "y"):
        cli("enqueue", "APP", "refuse", "--args", f'["{reason}"]')
    cli.work()
    result = cli("dead", "purge", "APP", "--yes")
    assert result.exit_code == 0
    assert "2 dead letter(s) deleted" in result.stdout
    assert cli.app.broker.dead_letters() == []
    assert queue_row(cli("queues", "APP").stdout, "default")["failed"] == 0


def test_dead_purge_asks_first_and_keeps_them_on_no(cli: CliApp) -> None:
    cli("enqueue", "APP", "refuse", "--args", '["x"]')
    cli.work()
    result = cli("dead", "purge", "APP", input="n\n")
    assert result.exit_code == 1
    assert "Aborted" in result.output
    assert len(cli.app.broker.dead_letters()) == 1


# -- periodic and running jobs under the queues -------------------------------------------

PERIODIC_MODULE = """
from sleipnir import App
from sleipnir.cli import main
from sleipnir.testing import FakeClock

app = App(broker="sqlite:///{db}", clock=FakeClock())  # 2023-11-14 22:13:20 UTC


@app.periodic(every=300)
def sweep() -> None:
    return None


@app.periodic(cron="0 6 * * *", tz="Europe/Oslo")
def report() -> None:
    return None
"""


@pytest.fixture
def periodic_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliApp]:
    yield from cli_app(PERIODIC_MODULE, tmp_path, monkeypatch)


def section(output: str, title: str) -> list[dict[str, str]]:
    """The rows of a titled table under the queues, by column name ([] when it is absent)."""
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in output.split("\n\n")[1:]}
    if title not in blocks:
        return []
    header, *rows = (re.split(r"\s{2,}", line.strip()) for line in blocks[title])
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_queues_shows_no_periodic_or_running_table_when_there_are_none(cli: CliApp) -> None:
    cli("enqueue", "APP", "add", "--args", "[1, 2]")
    cli.work()
    out = cli("queues", "APP").stdout
    assert section(out, "periodic") == [] and section(out, "running") == []
    assert "periodic" not in out and "running\n" not in out


def test_queues_shows_the_periodic_jobs_next_runs_and_who_fired_the_last_tick(
    periodic_cli: CliApp,
) -> None:
    before = {r["task"]: r for r in section(periodic_cli("queues", "APP").stdout, "periodic")}
    assert before["sweep"] == {
        "task": "sweep",
        "schedule": "every 300s",
        "next run (UTC)": "2023-11-14 22:15:00 (in 1m 40s)",
        "last tick (UTC)": "2023-11-14 22:10:00",
        "fired": "not yet",  # 200 s late, within its catch-up window of 300 s
    }
    # 06:00 in Oslo is 05:00 UTC in November; the last one is too old for its claim to be kept.
    assert before["report"]["schedule"] == "cron '0 6 * * *' (Europe/Oslo)"
    assert before["report"]["next run (UTC)"] == "2023-11-15 05:00:00 (in 6h 46m)"
    assert (before["report"]["last tick (UTC)"], before["report"]["fired"]) == (
        "2023-11-14 05:00:00", "?"
    )  # fmt: skip

    assert len(Scheduler(periodic_cli.app, owner="host-a:4242").run_pending()) == 1
    after = {r["task"]: r for r in section(periodic_cli("queues", "APP").stdout, "periodic")}
    assert after["sweep"]["fired"] == "fired by host-a:4242"
    assert after["report"]["fired"] == "?"


def _beat_running(app: App, jobs: list[RunningJob]) -> None:
    """Store a heartbeat of a worker that runs ``jobs`` now."""
    now = app.clock.time()
    beat = Heartbeat(
        worker_id="host-b:7:abcdef", host="host-b", pid=7, ppid=1, queues=["default"],
        concurrency=4, busy=len(jobs), held=len(jobs), started_at=now - 600, at=now,
        running=jobs,
    )  # fmt: skip
    app.results.beat(
        WorkerBeat(
            worker_id=beat.worker_id,
            at=now,
            expires_at=now + 15,
            body=msgspec.json.encode(beat),
            sample=msgspec.json.encode(sample_of(beat)),
        ),
        keep=3600,
    )


def test_queues_shows_the_running_jobs_with_their_progress(periodic_cli: CliApp) -> None:
    app = periodic_cli.app
    now = app.clock.time()
    long_one = app.tasks["sweep"].delay().id
    short_one = app.tasks["report"].delay().id
    assert len(app.broker.reserve(["default"], 2, lease=600)) == 2  # a worker runs them
    _beat_running(
        app,
        [
            RunningJob(id=short_one, task="report", queue="default", attempt=2,
                       started_at=now - 5),
            RunningJob(id=long_one, task="sweep", queue="default", attempt=1,
                       started_at=now - 250),
        ],
    )  # fmt: skip
    app.results.set_key(f"progress:{long_one}", b"[40,100]", now + 3600)
    rows = section(periodic_cli("queues", "APP").stdout, "running")
    assert rows == [
        {"job": long_one, "task": "sweep", "queue": "default", "attempt": "1",
         "running for": "4m 10s", "progress": "40/100 (40%)"},
        {"job": short_one, "task": "report", "queue": "default", "attempt": "2",
         "running for": "5s", "progress": "-"},
    ]  # fmt: skip


def test_queues_never_shows_more_running_jobs_than_the_broker_holds(
    periodic_cli: CliApp,
) -> None:
    """A beat is up to one interval old: a job that finished since is not shown running."""
    app = periodic_cli.app
    now = app.clock.time()
    finished = app.tasks["sweep"].delay().id
    still = app.tasks["report"].delay().id
    (res_finished,) = app.broker.reserve(["default"], 1, lease=600)
    app.broker.reserve(["default"], 1, lease=600)
    _beat_running(
        app,
        [
            RunningJob(id=finished, task="sweep", queue="default", attempt=1,
                       started_at=now - 4),
            RunningJob(id=still, task="report", queue="default", attempt=1,
                       started_at=now - 3),
        ],
    )  # fmt: skip
    assert app.broker.ack([res_finished]) == [True]  # it ended after the beat was sent
    out = periodic_cli("queues", "APP").stdout
    counts = out.splitlines()[1].split()
    assert counts[:4] == ["default", "0", "0", "1"]  # queue, ready, scheduled, running
    assert [r["job"] for r in section(out, "running")] == [still]


def test_job_shows_state_attempt_and_result_or_error(cli: CliApp) -> None:
    ok = cli.app.get_task("add").delay(2, 3)
    bad = cli.app.get_task("refuse").delay("no stock")
    queued = cli("job", "APP", ok.id)
    assert queued.exit_code == 0, queued.output
    assert queued.stdout.splitlines()[0] == f"{ok.id}  queued"
    cli.work()
    done = cli("job", "APP", ok.id, "--json")
    assert json.loads(done.stdout) | {"finished_at": None} == {
        "id": ok.id, "state": "succeeded", "task": "add", "queue": "default", "attempt": 1,
        "progress": None, "result": 5, "error": None, "finished_at": None,
    }  # fmt: skip
    failed = cli("job", "APP", bad.id)
    assert f"{bad.id}  failed" in failed.stdout
    assert "error     Fail: no stock" in failed.stdout
    unknown = cli("job", "APP", "06H0000000000000000000000")
    assert unknown.exit_code == 1
    assert "unknown" in unknown.stdout


def test_cancel_stops_a_queued_job_and_refuses_a_finished_one(cli: CliApp) -> None:
    add = cli.app.get_task("add")
    done, queued = add.delay(1, 1), add.delay(2, 2)
    worker_ran = cli.work()
    assert worker_ran.stats.succeeded == 2
    again = add.delay(3, 3)
    result = cli("cancel", "APP", again.id)
    assert result.exit_code == 0, result.output
    assert "cancel requested" in result.stdout
    assert cli.work().stats.cancelled == 1
    assert again.status() == "cancelled"
    refused = cli("cancel", "APP", done.id, queued.id)
    assert refused.exit_code == 1
    assert refused.stdout.count("already finished (succeeded)") == 2


def test_run_passes_the_shared_worker_options_on_to_each_process() -> None:
    from sleipnir.cli import _worker_options

    args = _worker_options("a,b", 4, 2, 12.5, 40.0, 1000, 512.0, scheduler=False)
    assert args == [
        "-c", "4", "--stop-timeout", "40.0", "-Q", "a,b", "--prefetch", "2", "--lease", "12.5",
        "--max-jobs", "1000", "--max-memory-mb", "512.0", "--no-scheduler",
    ]  # fmt: skip
    assert "--no-scheduler" not in _worker_options(None, 8, None, None, 30.0, None, None)
    for command in ("worker", "run"):
        shown = CliRunner().invoke(main, [command, "--help"]).output
        for flag in ("--queues", "--concurrency", "--prefetch", "--lease", "--stop-timeout",
                     "--max-jobs", "--max-memory-mb", "--no-scheduler"):  # fmt: skip
            assert flag in shown, (command, flag)


def test_enqueue_with_a_key_prints_the_same_job_for_the_same_call(cli: CliApp) -> None:
    first = cli("enqueue", "APP", "add", "--args", "[1, 2]", "--key", "nightly-2026-12-04")
    again = cli("enqueue", "APP", "add", "--args", "[1, 2]", "--key", "nightly-2026-12-04")
    assert first.exit_code == again.exit_code == 0, again.output
    assert first.stdout == again.stdout
    assert queue_row(cli("queues", "APP").stdout, "default")["ready"] == 1
    other = cli("enqueue", "APP", "add", "--args", "[9, 9]", "--key", "nightly-2026-12-04")
    assert other.exit_code != 0
    assert "different call" in other.output
