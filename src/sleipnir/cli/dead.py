"""``sleipnir dead``: list, retry and purge dead letters."""

from __future__ import annotations

import json

import click

from ..app import App
from ..bounded import cap_text
from ..errors import SleipnirError
from ..job import decode_job
from .base import APP, _echo_error, _error_line, _when, main


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
