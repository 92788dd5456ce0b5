"""The ``sleipnir`` group and what every command shares: the APP argument, the worker
flags, error lines, tables.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from ..app import App
from ..bounded import cap_text

F = TypeVar("F", bound=Callable[..., Any])


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
