"""Commands that put in or look at jobs: ``enqueue``, ``queues``, ``job``, ``cancel``."""

from __future__ import annotations

import json

import click

from ..app import App
from ..bounded import cap_text
from ..errors import SleipnirError
from ..results import Capability
from .base import APP, _echo_error, _error_line, _when, main


@main.command()
@APP
@click.argument("task")
@click.option("--args", "args_json", default="[]", help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments, a JSON object.")
@click.option("--queue", help="Queue (default: the task's).")
@click.option("--delay", type=click.FloatRange(min=0), help="Seconds before the job may run.")
@click.option("--priority", type=int, help="Higher runs first.")
@click.option(
    "--key",
    help="Idempotency key: the same key and call within 24 h prints the same job's id "
    "and stores nothing (safe to retry from scripts and cron).",
)
def enqueue(
    app: App,
    task: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    delay: float | None,
    priority: int | None,
    key: str | None,
) -> None:
    """Enqueue one job of TASK and print its id."""
    try:
        args = json.loads(args_json)
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args must be a JSON array and --kwargs a JSON object")
    try:
        handle = app.get_task(task).enqueue(
            args, kwargs, delay=delay, priority=priority, queue=queue, key=key
        )
    except SleipnirError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(handle.id)


@main.command()
@APP
def queues(app: App) -> None:
    """Per queue: ready, scheduled, running and failed (dead) jobs, how long the oldest
    ready job has waited and when the next scheduled one comes due; then the periodic
    jobs (next run, last tick) and the jobs the workers run now, with their progress."""
    from ..views import format_span

    rows = app.broker.stats()
    click.echo(
        f"{'queue':<24}{'ready':>10}{'scheduled':>11}{'running':>9}{'failed':>8}"
        f"  {'oldest ready':<14}  next scheduled"
    )
    now = app.clock.time()
    for s in rows:
        age = "-" if s.oldest_ready_at is None else f"{now - s.oldest_ready_at:.1f}s ago"
        due = "-" if s.next_scheduled_at is None else f"in {format_span(s.next_scheduled_at - now)}"
        click.echo(
            f"{s.queue:<24}{s.ready:>10}{s.scheduled:>11}{s.running:>9}{s.dead:>8}"
            f"  {age:<14}  {due}"
        )
    if not rows:
        click.echo("(no queues yet)")
    _echo_table("periodic", _periodic_rows(app, now))
    _echo_table("running", _running_rows(app, now, {s.queue: s.running for s in rows}))


def _periodic_rows(app: App, now: float) -> list[list[str]]:
    from ..views import format_span, schedule_views

    rows = [["task", "schedule", "next run (UTC)", "last tick (UTC)", "fired"]]
    for v in schedule_views(app, now):
        next_run = f"{_when(v.next_run_at)} (in {format_span(v.next_run_in)})"
        rows.append([v.task, v.schedule, next_run, _when(v.last_tick_at), v.fired_text])
    return rows


def _running_rows(app: App, now: float, running: dict[str, int]) -> list[list[str]]:
    from ..monitor import read_beats
    from ..views import format_span, running_views

    if not app.results.keeps(Capability.BEATS):
        return []  # no heartbeats on this store: nothing to say about running jobs
    try:
        beats = read_beats(app.results)
    except SleipnirError:
        return []
    rows = [["job", "task", "queue", "attempt", "running for", "progress"]]
    for v in running_views(app, beats, now, running):
        rows.append(
            [v.id, v.task, v.queue, str(v.attempt), format_span(v.running_for), v.progress_text]
        )
    return rows


@main.command("job")
@APP
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--full", is_flag=True, help="The whole error (traceback included).")
def job_command(app: App, job_id: str, as_json: bool, full: bool) -> None:
    """Where one job stands: state, attempt, progress, result or error.

    An error shows its first line (--full: all of it); any error shown, in --json too,
    is capped at 64 KiB characters, its head and tail kept."""
    state = app.status(job_id)
    record = app.results.get(job_id)
    progress = app.job(job_id).progress()
    info = app.broker.job_info(job_id) if record is None or not record.state.finished else None
    attempt = record.attempt if record is not None else (info.attempt if info else None)
    value = None
    if record is not None and record.value is not None:
        value = json.loads(record.value)
    error = record.error if record is not None else (info.last_error if info else None)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "id": job_id,
                    "state": state.value,
                    "task": record.task if record is not None else None,
                    "queue": record.queue if record is not None else (info.queue if info else None),
                    "attempt": attempt,
                    "progress": None if progress is None else list(progress),
                    "result": value,
                    "error": None if error is None else cap_text(error),
                    "finished_at": record.finished_at if record is not None else None,
                }
            )
        )
        return
    click.echo(f"{job_id}  {state.value}")
    if record is not None:
        click.echo(f"  task      {record.task} on {record.queue}")
    elif info is not None:
        click.echo(f"  queue     {info.queue}")
    if attempt is not None:
        click.echo(f"  attempt   {attempt}")
    if progress is not None:
        done, total = progress
        click.echo(f"  progress  {done:g}" + ("" if total is None else f"/{total:g}"))
    if record is not None and record.state.finished:
        click.echo(f"  finished  {_when(record.finished_at)} UTC")
    if value is not None:
        click.echo(f"  result    {json.dumps(value)[:500]}")
    if error and full:
        click.echo("  error")
        _echo_error(error, "    ")
    elif error:
        click.echo(f"  error     {_error_line(error)}")
    if state.value == "unknown":
        click.echo(f"  {app.broker.not_held(job_id)}")
        raise SystemExit(1)


@main.command()
@APP
@click.argument("job_ids", nargs=-1, required=True)
def cancel(app: App, job_ids: tuple[str, ...]) -> None:
    """Cancel jobs: a queued one never runs, a running one is stopped (see docs/tasks.md)."""
    finished = []
    for job_id in job_ids:
        if app.job(job_id).cancel():
            click.echo(f"{job_id}  cancel requested")
        else:
            finished.append(job_id)
            click.echo(f"{job_id}  already finished ({app.status(job_id).value}): not cancelled")
    if finished:
        raise SystemExit(1)


def _echo_table(title: str, rows: list[list[str]]) -> None:
    """A titled table of left-aligned columns; nothing when it has no row under its header."""
    if len(rows) < 2:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    click.echo(f"\n{title}")
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
