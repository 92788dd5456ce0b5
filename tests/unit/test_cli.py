"""The ``sleipnir`` command in-process, on an App module written into tmp_path.

The ``worker`` command ends with ``os._exit``, so these tests run the Worker class
instead (``cli.work()``); the command itself is covered by the integration tests.
"""

from __future__ import annotations

import json

from .conftest import CliApp


def queue_row(output: str, queue: str) -> dict[str, int]:
    """The counts of one queue in the ``queues`` table."""
    header, *rows = output.splitlines()
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
