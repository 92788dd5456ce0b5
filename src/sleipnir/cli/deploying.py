"""``sleipnir status`` (the supervisor's status file) and ``sleipnir deploy`` (systemd
units, supervisord programs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .base import load_app, main


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

    from ..supervisor.status import (
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
    from ..deploy import DeployOptions, supervisord_program, systemd_unit

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
