"""Commands that run things: ``worker``, ``run`` (the supervisor), ``status``, ``deploy``,
``scheduler``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from ..app import App
from ..errors import SleipnirError
from ..worker import Worker
from .base import APP, _worker_flags, load_app, main


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
    from ..supervisor.child import WorkerMonitor

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
    from ..supervisor import ProcessConfig, ScalePolicy, Supervisor
    from ..supervisor.status import run_dir_for

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
@APP
def scheduler(app: App) -> None:
    """Fire the app's periodic jobs, without running any (workers run a scheduler too)."""
    import signal as signal_module
    import threading

    from ..schedule import Scheduler

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
