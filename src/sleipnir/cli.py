"""The ``sleipnir`` command: run workers, enqueue jobs, look at queues and dead letters."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from .app import App
from .bounded import cap_text
from .errors import SleipnirError
from .job import decode_job
from .results import Capability
from .worker import Worker

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["load_app", "main"]


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (or ``module``, taking its ``app``) and return the App."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="APP") from exc
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise click.BadParameter(
            f"{module_name}.{attr or 'app'} is not a sleipnir.App", param_hint="APP"
        )
    return app


class _AppType(click.ParamType):  # type: ignore[type-arg]
    name = "module:app"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> App:
        if isinstance(value, App):
            return value
        if ctx is not None:
            ctx.meta["sleipnir.app_spec"] = str(value)  # the worker's title names it
        return load_app(str(value))


APP = click.argument("app", type=_AppType())


ERROR_LINE_CHARS = 200
"""Characters of an error shown on one line of a list (the rest with ``--full``)."""


def _error_line(text: str, limit: int = ERROR_LINE_CHARS) -> str:
    """The first line of an error, at most ``limit`` characters, saying how much is left.

    Reads at most ``limit`` characters, so a message megabytes long costs nothing here.
    """
    line = text[: limit + 1].split("\n", 1)[0][:limit]
    left = len(text) - len(line)
    return line if left == 0 else f"{line} [... {left:,} more characters]"


def _echo_error(text: str, indent: str) -> None:
    """A whole error (capped by :func:`cap_text`), each line indented."""
    for line in cap_text(text).splitlines():
        click.echo(f"{indent}{line}".rstrip())


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
@click.version_option(package_name="sleipnir")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """Sleipnir: durable background jobs."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


def _worker_flags(*, each: str) -> Callable[[F], F]:
    """The options ``worker`` and ``run`` share (``run`` passes them on to each process).

    ``each``: how the help text names what they apply to ("" or " each process").
    """
    options = [
        click.option("-Q", "--queues", help="Comma-separated queues, served in this order."),
        click.option(
            "-c",
            "--concurrency",
            type=click.IntRange(min=1),
            default=8,
            show_default=True,
            help=f"Jobs run at once{each and ' by' + each} (threads for sync tasks).",
        ),
        click.option(
            "--prefetch", type=click.IntRange(min=0), help="Jobs reserved ahead of a free slot."
        ),
        click.option(
            "--lease",
            type=click.FloatRange(min=0, min_open=True),
            help="Lease seconds (default: the App's).",
        ),
        click.option(
            "--stop-timeout",
            type=click.FloatRange(min=0),
            default=30.0,
            show_default=True,
            help="Seconds running jobs get to finish after SIGTERM.",
        ),
        click.option(
            "--max-jobs",
            type=click.IntRange(min=1),
            help=f"Recycle{each or ' the worker'} after this many jobs: it exits cleanly "
            "(a supervisor starts a fresh process).",
        ),
        click.option(
            "--max-memory-mb",
            type=click.FloatRange(min=0, min_open=True),
            help=f"Recycle{each or ' the worker'} once its resident memory passes this many MB.",
        ),
        click.option(
            "--scheduler/--no-scheduler",
            default=True,
            show_default=True,
            help="Fire the app's periodic jobs from the worker too (each tick fires once overall).",
        ),
    ]

    def apply(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


@main.command()
@APP
@_worker_flags(each="")
@click.option("--burst", is_flag=True, help="Exit 0 once the queues are empty.")
@click.option("--supervisor-fd", type=int, hidden=True)
@click.option("--name", "process_name", hidden=True)
def worker(
    app: App,
    queues: str | None,
    concurrency: int,
    prefetch: int | None,
    lease: float | None,
    stop_timeout: float,
    burst: bool,
    max_jobs: int | None,
    max_memory_mb: float | None,
    scheduler: bool,
    supervisor_fd: int | None,
    process_name: str | None,
) -> None:
    """Run a worker: reserve jobs from the queues, run them, ack them after they finish."""
    from .supervisor.child import WorkerMonitor

    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    given = click.get_current_context().meta.get("sleipnir.app_spec")
    w = Worker(
        app,
        names,
        app_spec=None if not isinstance(given, str) else given if ":" in given else f"{given}:app",
        concurrency=concurrency,
        prefetch=prefetch,
        lease=lease,
        stop_timeout=stop_timeout,
        burst=burst,
        max_jobs=max_jobs,
        scheduler=scheduler and not burst,
    )
    spec = click.get_current_context().meta.get("sleipnir.app_spec", app.broker_url)
    monitor = WorkerMonitor(
        w, spec, supervisor_fd=supervisor_fd, name=process_name, max_memory_mb=max_memory_mb
    )
    monitor.start()
    code = w.run()
    monitor.close()
    app.close()
    sys.stdout.flush()
    # Task threads that outlived the stop timeout must not hold the process up:
    # their jobs were given back and will run again elsewhere.
    os._exit(code)


def _worker_options(
    queues: str | None,
    concurrency: int,
    prefetch: int | None,
    lease: float | None,
    stop_timeout: float,
    max_jobs: int | None,
    max_memory_mb: float | None,
    scheduler: bool = True,
) -> list[str]:
    """The ``sleipnir worker`` arguments the supervisor passes to each process."""
    args = ["-c", str(concurrency), "--stop-timeout", repr(stop_timeout)]
    if queues:
        args += ["-Q", queues]
    if prefetch is not None:
        args += ["--prefetch", str(prefetch)]
    if lease is not None:
        args += ["--lease", repr(lease)]
    if max_jobs is not None:
        args += ["--max-jobs", str(max_jobs)]
    if max_memory_mb is not None:
        args += ["--max-memory-mb", repr(max_memory_mb)]
    if not scheduler:
        args.append("--no-scheduler")
    return args


@main.command()
@click.argument("spec", metavar="APP")
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes to keep running (the minimum when scaling).",
)
@click.option(
    "--max-processes",
    type=click.IntRange(min=1),
    help="Scale up to this many while the oldest ready job waits longer than --scale-up-lag.",
)
@_worker_flags(each=" each process")
@click.option(
    "--startsecs",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Show a process RUNNING after this long even before it said it is ready.",
)
@click.option(
    "--startretries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Failed starts in a row retried (with growing backoff) before FATAL.",
)
@click.option(
    "--scale-up-lag",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Add a process while the oldest ready job waited longer than this (seconds).",
)
@click.option(
    "--scale-down-after",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Retire a process after the queues were quiet this long (seconds).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="Where the status file goes [default: $SLEIPNIR_RUN_DIR or ./.sleipnir].",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False),
    help="One log file per process here (default: the processes log to this stderr).",
)
@click.pass_context
def run(
    ctx: click.Context,
    spec: str,
    processes: int,
    max_processes: int | None,
    queues: str | None,
    concurrency: int,
    prefetch: int | None,
    lease: float | None,
    stop_timeout: float,
    max_jobs: int | None,
    max_memory_mb: float | None,
    scheduler: bool,
    startsecs: float,
    startretries: int,
    scale_up_lag: float,
    scale_down_after: float,
    run_dir: str | None,
    log_dir: str | None,
) -> None:
    """Run and supervise worker processes: restart the dead, stop them gracefully.

    SIGTERM or Ctrl-C: the workers finish their running jobs (up to --stop-timeout),
    then exit; a second signal kills them at once. SIGHUP: restart the workers one at
    a time, with no gap in service. See `sleipnir status APP` for their state.
    """
    from .supervisor import ProcessConfig, ScalePolicy, Supervisor
    from .supervisor.status import run_dir_for

    app = load_app(spec)  # fail here, once, on a spec that does not import
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    if max_processes is not None and max_processes < processes:
        raise click.BadParameter(
            f"{max_processes} is below --processes {processes}", param_hint="--max-processes"
        )
    supervisor = Supervisor(
        spec,
        processes=processes,
        max_processes=max_processes,
        worker_args=_worker_options(
            queues, concurrency, prefetch, lease, stop_timeout, max_jobs, max_memory_mb, scheduler
        ),
        queues=names,
        config=ProcessConfig(
            startsecs=startsecs, startretries=startretries, stop_timeout=stop_timeout
        ),
        run_dir=run_dir_for(run_dir),
        log_dir=Path(log_dir).absolute() if log_dir else None,
        app=app,
        scale_policy=ScalePolicy(up_lag=scale_up_lag, down_after=scale_down_after),
        verbose=logging.getLogger().isEnabledFor(logging.DEBUG),
    )
    try:
        code = supervisor.run()
    except SleipnirError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()
    ctx.exit(code)


@main.command()
@click.argument("spec", metavar="APP")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="The supervisor's run directory [default: $SLEIPNIR_RUN_DIR or ./.sleipnir].",
)
@click.option("--json", "as_json", is_flag=True, help="The status file as it is, plus 'alive'.")
def status(spec: str, run_dir: str | None, as_json: bool) -> None:
    """The supervisor of APP and each of its processes: pid, state, uptime, restarts, jobs.

    Exit status: 0 all well, 1 a process is FATAL, 3 no supervisor is running.
    """
    import time

    from .supervisor.status import (
        format_status,
        pid_alive,
        read_status,
        run_dir_for,
        status_path,
    )

    path = status_path(run_dir_for(run_dir), spec)
    try:
        state = read_status(path)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"{path} is not a status file: {exc}") from exc
    if state is None:
        click.echo(f"no supervisor of {spec} has run with the run directory {path.parent}")
        sys.exit(3)
    alive = state.state != "stopped" and pid_alive(state.pid)
    if as_json:
        click.echo(json.dumps({**json.loads(state.to_json()), "alive": alive}))
    else:
        click.echo(format_status(state, time.time(), alive))
    if not alive:
        sys.exit(3)
    sys.exit(1 if any(c.state == "FATAL" for c in state.children) else 0)


@main.command()
@click.argument("manager", type=click.Choice(["systemd", "supervisord"]))
@click.argument("spec", metavar="APP")
@click.option("-p", "--processes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-processes", type=click.IntRange(min=1), help="systemd only: scale up to.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("-Q", "--queues", help="Comma-separated queues.")
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="The workers' --stop-timeout; the manager waits longer than this.",
)
@click.option("--startsecs", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--startretries", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--user", help="Run as this user.")
@click.option(
    "--directory",
    type=click.Path(file_okay=False),
    help="Working directory [default: this one].",
)
@click.option("--env-file", type=click.Path(dir_okay=False), help="systemd EnvironmentFile=.")
@click.option("--log-dir", type=click.Path(file_okay=False), help="Per-process log files here.")
def deploy(
    manager: str,
    spec: str,
    processes: int,
    max_processes: int | None,
    concurrency: int,
    queues: str | None,
    stop_timeout: float,
    startsecs: float,
    startretries: int,
    user: str | None,
    directory: str | None,
    env_file: str | None,
    log_dir: str | None,
) -> None:
    """Print a systemd unit or a supervisord program for APP, with timings that fit.

    systemd runs `sleipnir run` (the supervisor); supervisord runs `sleipnir worker`
    numprocs times, since it supervises them itself.
    """
    from .deploy import DeployOptions, supervisord_program, systemd_unit

    if directory is None:
        load_app(spec)  # a spec that does not import here would not under the manager either
    if max_processes is not None and max_processes < processes:
        raise click.BadParameter(
            f"{max_processes} is below --processes {processes}", param_hint="--max-processes"
        )
    if manager == "supervisord" and max_processes is not None and max_processes > processes:
        raise click.UsageError("supervisord runs a fixed number of processes: no --max-processes")
    options = DeployOptions(
        spec=spec,
        processes=processes,
        max_processes=max_processes,
        concurrency=concurrency,
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else (),
        stop_timeout=stop_timeout,
        startsecs=startsecs,
        startretries=startretries,
        working_directory=Path(directory) if directory else None,
        user=user,
        environment_file=Path(env_file).absolute() if env_file else None,
        log_dir=Path(log_dir).absolute() if log_dir else None,
    )
    text = systemd_unit(options) if manager == "systemd" else supervisord_program(options)
    click.echo(text, nl=False)


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
    from .views import format_span

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
    from .views import format_span, schedule_views

    rows = [["task", "schedule", "next run (UTC)", "last tick (UTC)", "fired"]]
    for v in schedule_views(app, now):
        next_run = f"{_when(v.next_run_at)} (in {format_span(v.next_run_in)})"
        rows.append([v.task, v.schedule, next_run, _when(v.last_tick_at), v.fired_text])
    return rows


def _running_rows(app: App, now: float, running: dict[str, int]) -> list[list[str]]:
    from .monitor import read_beats
    from .views import format_span, running_views

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


def _echo_table(title: str, rows: list[list[str]]) -> None:
    """A titled table of left-aligned columns; nothing when it has no row under its header."""
    if len(rows) < 2:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    click.echo(f"\n{title}")
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


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


@main.group()
def dead() -> None:
    """Jobs that failed for good: list, retry or purge them."""


@dead.command("list")
@APP
@click.option("--queue", help="Only this queue.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--full", is_flag=True, help="Each reason whole (traceback included).")
def dead_list(app: App, queue: str | None, limit: int, as_json: bool, full: bool) -> None:
    """List dead letters, oldest first, with the reason: its first line, cut at 200
    characters (--full: all of it). A reason is capped at 64 KiB characters, its head
    and tail kept, in --json too."""
    letters = app.broker.dead_letters(queue, limit)
    for d in letters:
        try:
            task = decode_job(d.body).task
        except SleipnirError:
            task = "?"
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "id": d.id,
                        "queue": d.queue,
                        "task": task,
                        "attempt": d.attempt,
                        "failed_at": d.failed_at,
                        "reason": cap_text(d.reason),
                    }
                )
            )
            continue
        line = f"{d.id}  {d.queue}  {task}  attempt {d.attempt}  {_when(d.failed_at)}"
        if full:
            click.echo(line)
            _echo_error(d.reason, "    ")
        else:
            click.echo(f"{line}  {_error_line(d.reason)}")
    if not letters and not as_json:
        click.echo("no dead letters")


@dead.command("retry")
@APP
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Retry every dead letter.")
def dead_retry(app: App, ids: tuple[str, ...], everything: bool) -> None:
    """Put dead letters back on their queues (attempts counted from zero)."""
    if not ids and not everything:
        raise click.UsageError("give job ids or --all")
    moved = app.retry_dead(None if everything else list(ids))
    missing = sorted(set(ids) - set(moved))
    click.echo(f"{len(moved)} job(s) back on their queues")
    if missing:
        raise click.ClickException(f"not dead letters: {', '.join(missing)}")


@dead.command("purge")
@APP
@click.option("--yes", is_flag=True, help="Do not ask.")
def dead_purge(app: App, yes: bool) -> None:
    """Delete every dead letter."""
    if not yes:
        click.confirm("Delete every dead letter?", abort=True)
    click.echo(f"{app.broker.delete_dead(None)} dead letter(s) deleted")


@main.command()
@click.argument("app", type=_AppType(), required=False)
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    help="The supervisor's stop timeout: systemd TimeoutStopSec=, supervisord stopwaitsecs=.",
)
@click.option(
    "--worker-stop-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="The workers' --stop-timeout.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0, min_open=True),
    help="The workers' --lease (default: the App's).",
)
@click.option(
    "--steal-seconds",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="Seconds to sample CPU steal over; 0 skips it.",
)
@click.option(
    "--consumer-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=1800.0,
    show_default=True,
    help="RabbitMQ's consumer_timeout in seconds (rabbitmq.conf has it in ms).",
)
def doctor(
    app: App | None,
    as_json: bool,
    stop_timeout: float | None,
    worker_stop_timeout: float,
    lease: float | None,
    steal_seconds: float,
    consumer_timeout: float,
) -> None:
    """Check this host, the broker and the timings: pass, warn or fail, each with its fix.

    Without APP the App comes from the SLEIPNIR_* environment variables. Exits 1
    when any check fails.
    """
    from . import doctor as checkup
    from .brokers.base import redact_url

    # The report is the output; client libraries' connection chatter is not.
    logging.getLogger("pika").setLevel(logging.WARNING)
    given = app is not None
    if app is None:
        try:
            app = App.from_env()
        except SleipnirError as exc:
            raise click.ClickException(str(exc)) from exc
    checks = checkup.run_doctor(
        app,
        app_given=given,
        lease_s=lease,
        worker_stop_timeout_s=worker_stop_timeout,
        supervisor_stop_timeout_s=stop_timeout,
        steal_seconds=steal_seconds,
        consumer_timeout_s=consumer_timeout,
    )
    app.close()
    broker = redact_url(app.broker_url)
    if as_json:
        click.echo(checkup.render_json(checks, broker=broker))
    else:
        click.echo(checkup.render_text(checks, header=f"sleipnir doctor: {broker}"))
    sys.exit(1 if checkup.failed(checks) else 0)


@main.command()
@APP
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--idempotency-window",
    type=click.FloatRange(min=0, min_open=True),
    default=24 * 3600.0,
    show_default=True,
    help="Seconds an Idempotency-Key keeps naming its job.",
)
@click.option(
    "--session-lifetime",
    type=click.FloatRange(min=0, min_open=True),
    default=12 * 3600.0,
    show_default=True,
    help="Seconds a dashboard login lasts before the login form is shown again.",
)
@click.option("--access-log/--no-access-log", default=True, help="Log every request.")
def web(
    app: App,
    host: str,
    port: int,
    idempotency_window: float,
    session_lifetime: float,
    access_log: bool,
) -> None:
    """Serve the HTTP API, /metrics, /healthz and the dashboard (needs sleipnir[web]).

    Every route but /healthz needs "Authorization: Bearer $SLEIPNIR_API_TOKEN";
    without that variable, or with a token shorter than 16 characters, only a
    loopback address is accepted.
    """
    try:
        from .web import serve
    except ImportError as exc:
        raise click.ClickException(f"{exc}: pip install 'sleipnir[web]'") from exc
    try:
        serve(
            app,
            host=host,
            port=port,
            idempotency_window=idempotency_window,
            session_lifetime=session_lifetime,
            access_log=access_log,
        )
    except SleipnirError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@APP
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between redraws.",
)
@click.option("--once", is_flag=True, help="Print the view once and exit.")
def top(app: App, interval: float, once: bool) -> None:
    """A live view of queues, throughput, wait and run times, workers and host CPU steal."""
    try:
        import rich  # noqa: F401 - checked here to name the extra

        from .top import run_top
    except ImportError as exc:
        raise click.ClickException(f"{exc}: pip install 'sleipnir[web]'") from exc
    run_top(app, interval=interval, once=once)


@main.command()
@APP
def scheduler(app: App) -> None:
    """Fire the app's periodic jobs, without running any (workers run a scheduler too)."""
    import signal as signal_module
    import threading

    from .schedule import Scheduler

    if not app.schedules:
        raise click.UsageError("the app has no periodic tasks (@app.periodic or schedule=)")
    sched = Scheduler(app)
    for entry in sched.entries:
        click.echo(f"{entry.name}: {entry.schedule}, catch-up {entry.catch_up:g}s")

    def stop(signum: int, frame: object) -> None:
        sched.stop()

    for sig in (signal_module.SIGTERM, signal_module.SIGINT):
        signal_module.signal(sig, stop)
    thread = threading.Thread(target=sched.run, name="sleipnir-scheduler")
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    app.close()
