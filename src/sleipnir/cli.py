"""The ``sleipnir`` command: run workers, enqueue jobs, look at queues and dead letters."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import click

from .app import App
from .errors import SleipnirError
from .job import decode_job
from .worker import Worker

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
        return value if isinstance(value, App) else load_app(str(value))


APP = click.argument("app", type=_AppType())


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


@main.command()
@APP
@click.option("-Q", "--queues", help="Comma-separated queues, served in this order.")
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Jobs run at once (threads for sync tasks).",
)
@click.option("--prefetch", type=click.IntRange(min=0), help="Jobs reserved ahead of a free slot.")
@click.option(
    "--lease",
    type=click.FloatRange(min=0, min_open=True),
    help="Lease seconds (default: the App's).",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running jobs get to finish after SIGTERM.",
)
@click.option("--burst", is_flag=True, help="Exit 0 once the queues are empty.")
def worker(
    app: App,
    queues: str | None,
    concurrency: int,
    prefetch: int | None,
    lease: float | None,
    stop_timeout: float,
    burst: bool,
) -> None:
    """Run a worker: reserve jobs from the queues, run them, ack them after they finish."""
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    code = Worker(
        app,
        names,
        concurrency=concurrency,
        prefetch=prefetch,
        lease=lease,
        stop_timeout=stop_timeout,
        burst=burst,
    ).run()
    app.close()
    sys.stdout.flush()
    # Task threads that outlived the stop timeout must not hold the process up:
    # their jobs were given back and will run again elsewhere.
    os._exit(code)


@main.command()
@APP
@click.argument("task")
@click.option("--args", "args_json", default="[]", help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments, a JSON object.")
@click.option("--queue", help="Queue (default: the task's).")
@click.option("--delay", type=click.FloatRange(min=0), help="Seconds before the job may run.")
@click.option("--priority", type=int, help="Higher runs first.")
def enqueue(
    app: App,
    task: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    delay: float | None,
    priority: int | None,
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
            args, kwargs, delay=delay, priority=priority, queue=queue
        )
    except SleipnirError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(handle.id)


@main.command()
@APP
def queues(app: App) -> None:
    """Per queue: ready, scheduled, running and failed (dead) jobs."""
    rows = app.broker.stats()
    click.echo(
        f"{'queue':<24}{'ready':>10}{'scheduled':>11}{'running':>9}{'failed':>8}  oldest ready"
    )
    now = app.clock.time()
    for s in rows:
        age = "-" if s.oldest_ready_at is None else f"{now - s.oldest_ready_at:.1f}s ago"
        click.echo(f"{s.queue:<24}{s.ready:>10}{s.scheduled:>11}{s.running:>9}{s.dead:>8}  {age}")
    if not rows:
        click.echo("(no queues yet)")


@main.group()
def dead() -> None:
    """Jobs that failed for good: list, retry or purge them."""


@dead.command("list")
@APP
@click.option("--queue", help="Only this queue.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead_list(app: App, queue: str | None, limit: int, as_json: bool) -> None:
    """List dead letters, oldest first, with the reason."""
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
                        "reason": d.reason,
                    }
                )
            )
        else:
            reason = d.reason.split("\n", 1)[0]
            click.echo(
                f"{d.id}  {d.queue}  {task}  attempt {d.attempt}  {_when(d.failed_at)}  {reason}"
            )
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
