"""Configuration for running workers under systemd or supervisord, with timings that fit.

The pitfall these avoid: a process manager that stops waiting before the workers'
own stop timeout is over kills jobs in flight; one that signals only the main
process leaves the jobs' subprocesses behind, or one that signals every process
at once kills those subprocesses in the middle of their job.

* **systemd** runs ``sleipnir run`` (the supervisor). ``KillMode=mixed``: the stop
  signal goes to the supervisor alone, which stops its workers gracefully; when
  ``TimeoutStopSec`` is over, everything left in the unit's control group is
  killed. ``TimeoutStopSec`` is above the workers' stop timeout plus the
  supervisor's own kill grace, so systemd never cuts a graceful stop short.
  ``systemctl reload`` sends SIGHUP: a rolling restart.
* **supervisord** is itself the process manager, so its program runs ``sleipnir
  worker`` directly, ``numprocs`` times. The same split as ``KillMode=mixed``:
  ``stopasgroup=false`` sends the stop signal to the worker alone (a subprocess
  that a job started is not cut off in the middle of that job), ``killasgroup=true``
  sends the final SIGKILL to the worker's whole process group; ``stopwaitsecs`` is
  above the worker's stop timeout.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .supervisor.states import ProcessConfig
from .supervisor.status import slug

__all__ = ["STOP_MARGIN", "DeployOptions", "supervisord_program", "systemd_unit"]

STOP_MARGIN = 15.0
"""Seconds the process manager waits beyond what a graceful stop may take, at most."""


@dataclass(frozen=True, slots=True)
class DeployOptions:
    """What the generated configuration runs."""

    spec: str
    processes: int = 1
    max_processes: int | None = None
    concurrency: int = 8
    queues: Sequence[str] = ()
    stop_timeout: float = 30.0
    startsecs: float = 1.0
    startretries: int = 3
    working_directory: Path | None = None
    user: str | None = None
    environment_file: Path | None = None
    log_dir: Path | None = None
    python: str = sys.executable

    @property
    def name(self) -> str:
        return f"sleipnir-{slug(self.spec)}"

    @property
    def directory(self) -> Path:
        return (self.working_directory or Path.cwd()).absolute()

    def worker_args(self) -> list[str]:
        args = ["-c", str(self.concurrency), "--stop-timeout", f"{self.stop_timeout:g}"]
        if self.queues:
            args += ["-Q", ",".join(self.queues)]
        return args


def supervisor_stop_seconds(options: DeployOptions) -> float:
    """How long the supervisor may take to stop gracefully: its workers' timeout plus its grace."""
    return options.stop_timeout + ProcessConfig().kill_grace


def systemd_unit(options: DeployOptions) -> str:
    """A systemd service unit that runs ``sleipnir run``."""
    o = options
    run = [o.python, "-m", "sleipnir", "run", o.spec, "--processes", str(o.processes)]
    if o.max_processes is not None and o.max_processes > o.processes:
        run += ["--max-processes", str(o.max_processes)]
    run += o.worker_args()
    run += ["--startsecs", f"{o.startsecs:g}", "--startretries", str(o.startretries)]
    if o.log_dir is not None:
        run += ["--log-dir", str(o.log_dir)]
    timeout = supervisor_stop_seconds(o) + STOP_MARGIN
    lines = [
        "[Unit]",
        f"Description=Sleipnir workers of {o.spec}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={o.directory}",
        f"ExecStart={shlex.join(run)}",
        "# systemctl reload: restart the workers one at a time, no gap in service.",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=always",
        "RestartSec=2",
        "# SIGTERM to the supervisor alone: it stops its workers, which finish their",
        f"# running jobs within {o.stop_timeout:g}s. What is left when TimeoutStopSec is",
        "# over, in the whole control group, is killed with SIGKILL.",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={timeout:g}",
        "Environment=PYTHONUNBUFFERED=1",
    ]
    if o.environment_file is not None:
        lines.append(f"EnvironmentFile={o.environment_file}")
    if o.user is not None:
        lines.append(f"User={o.user}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def supervisord_program(options: DeployOptions) -> str:
    """A supervisord ``[program:...]`` section that runs ``sleipnir worker`` numprocs times."""
    o = options
    command = [o.python, "-m", "sleipnir", "worker", o.spec, *o.worker_args()]
    log_dir = o.log_dir or Path("/var/log/sleipnir")
    lines = [
        f"[program:{o.name}]",
        f"command={shlex.join(command)}",
        "process_name=%(program_name)s-%(process_num)02d",
        f"numprocs={o.processes}",
        f"directory={o.directory}",
        "autostart=true",
        "autorestart=true",
        f"startsecs={o.startsecs:g}",
        f"startretries={o.startretries}",
        "stopsignal=TERM",
        f"; above the worker's --stop-timeout {o.stop_timeout:g}: a stop never cuts a job short",
        f"stopwaitsecs={o.stop_timeout + STOP_MARGIN:g}",
        "; TERM to the worker alone (it stops fetching and lets its jobs finish, their",
        "; subprocesses too); the final KILL to its whole process group",
        "stopasgroup=false",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={log_dir / '%(program_name)s-%(process_num)02d.log'}",
        'environment=PYTHONUNBUFFERED="1"',
    ]
    if o.user is not None:
        lines.append(f"user={o.user}")
    lines.append("")
    return "\n".join(lines)
