"""The status file: what a running supervisor says about itself and its processes.

The supervisor replaces ``<run dir>/<app>.json`` atomically (write, fsync-free
rename) about once a second and at every state change; ``sleipnir status`` reads
it. The file is advisory: a supervisor killed with SIGKILL leaves its last one
behind, so a reader checks that the pid it names is still alive.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_RUN_DIR",
    "ChildStatus",
    "SupervisorStatus",
    "format_status",
    "pid_alive",
    "read_status",
    "run_dir_for",
    "slug",
    "status_path",
    "write_status",
]

DEFAULT_RUN_DIR = ".sleipnir"
"""Relative to the working directory, unless ``--run-dir`` or ``SLEIPNIR_RUN_DIR`` says."""

VERSION = 1


@dataclass(slots=True)
class ChildStatus:
    """One worker process as the supervisor sees it."""

    name: str
    state: str
    pid: int | None
    since_at: float
    started_at: float | None
    restarts: int
    failed_starts: int
    jobs_done: int
    """Jobs settled by this process slot, across its restarts."""
    busy: int | None = None
    concurrency: int | None = None
    last_exit: int | None = None
    message: str = ""


@dataclass(slots=True)
class SupervisorStatus:
    """The whole file."""

    app: str
    pid: int
    state: str
    """``starting``, ``running``, ``reloading``, ``stopping`` or ``stopped``."""
    started_at: float
    updated_at: float
    processes: int
    min_processes: int
    max_processes: int
    children: list[ChildStatus] = field(default_factory=list)
    version: int = VERSION

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "version": self.version,
            "app": self.app,
            "pid": self.pid,
            "state": self.state,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "processes": self.processes,
            "min_processes": self.min_processes,
            "max_processes": self.max_processes,
            "children": [{k: getattr(c, k) for k in ChildStatus.__slots__} for c in self.children],
        }
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SupervisorStatus:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError("not a sleipnir status file of this version")
        children = [ChildStatus(**c) for c in data.pop("children")]
        return cls(children=children, **data)


def slug(spec: str) -> str:
    """A file name for an app spec: ``myproj.tasks:app`` -> ``myproj.tasks-app``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-") or "app"


def run_dir_for(option: str | os.PathLike[str] | None) -> Path:
    """The run directory: the option, else ``$SLEIPNIR_RUN_DIR``, else ``./.sleipnir``."""
    chosen = option or os.environ.get("SLEIPNIR_RUN_DIR") or DEFAULT_RUN_DIR
    return Path(chosen).absolute()


def status_path(run_dir: Path, spec: str) -> Path:
    return run_dir / f"{slug(spec)}.json"


def write_status(path: Path, status: SupervisorStatus) -> None:
    """Replace the file in one rename, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(status.to_json())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(path: Path) -> SupervisorStatus | None:
    """The status, or ``None`` when no supervisor ever wrote one there."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return SupervisorStatus.from_json(text)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_status(status: SupervisorStatus, now: float, alive: bool) -> str:
    """The table ``sleipnir status`` prints."""
    state = status.state if alive else f"not running (last state: {status.state})"
    lines = [
        f"supervisor  pid {status.pid}  {state}  up {_duration(now - status.started_at)}"
        f"  processes {status.processes} (min {status.min_processes},"
        f" max {status.max_processes})  updated {_duration(now - status.updated_at)} ago",
        f"{'name':<6}{'pid':>8}  {'state':<9}{'uptime':>9}{'restarts':>10}{'jobs done':>11}"
        f"{'busy':>8}  note",
    ]
    for c in status.children:
        running = c.state in ("RUNNING", "STARTING", "STOPPING") and c.started_at is not None
        uptime = _duration(now - c.started_at) if running and c.started_at else "-"
        busy = f"{c.busy}/{c.concurrency}" if c.busy is not None and c.concurrency else "-"
        pid = str(c.pid) if c.pid is not None else "-"
        lines.append(
            f"{c.name:<6}{pid:>8}  {c.state:<9}{uptime:>9}{c.restarts:>10}{c.jobs_done:>11}"
            f"{busy:>8}  {c.message}".rstrip()
        )
    return "\n".join(lines)
