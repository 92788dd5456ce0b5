"""Jobs that run in a process of their own, killed at their time limit.

``@app.task(timeout=600.0, isolate=True)`` runs each job of a sync task in a new
Python process (``python -c ... APP FD``, which calls :func:`_main`) instead of on a thread
of the worker. A thread cannot be stopped safely; a process can: at the task's
``timeout`` the worker kills the job's process group, and the attempt fails with
``TimeoutError`` (retried like any failure). A cancelled job's process is killed
too. The cost is a process start per job (an interpreter and the app's module,
a few hundred milliseconds): meant for long jobs that must not overrun, not for
many small ones.

The child imports the app by its ``module:attribute`` (the one ``sleipnir
worker`` was given, or found among the imported modules), reads the call as
JSON on stdin, and writes its outcome as JSON on a pipe of its own (file
descriptor ``FD``), so what the task prints goes to the worker's log and never
into the reply. Nothing is pickled. It exits by itself when its worker dies.
``SLEIPNIR_WORKER_PID`` in its environment names that worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import Cancelled, ConfigurationError, EncodeError, Fail, Retry

if TYPE_CHECKING:
    from .app import App
    from .job import Job
    from .task import Task

__all__ = ["ProcessCrashed", "RemoteError", "find_spec", "run_isolated"]


class Request(msgspec.Struct, frozen=True):
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    job_id: str
    queue: str
    attempt: int
    headers: dict[str, str]
    parent: int


class Reply(msgspec.Struct, frozen=True, omit_defaults=True):
    kind: str
    """``ok``, ``retry``, ``fail``, ``cancelled`` or ``error``."""
    value: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    after: float | None = None
    reason: str = ""


class RemoteError(Exception):
    """A task that failed in its own process: ``text`` is its error and traceback."""

    def __init__(self, text: str) -> None:
        super().__init__(text.split("\n", 1)[0])
        self.text = text


class ProcessCrashed(RemoteError):
    """The job's process died without a reply: a signal, or an exit the task did not return
    from. The job's own failure; the worker that started it is unharmed."""


def find_spec(app: App) -> str | None:
    """``module:attribute`` of an imported module that holds ``app``, or ``None``."""
    for name, module in list(sys.modules.items()):
        if module is None or name in ("__main__", "sleipnir") or name.startswith("sleipnir."):
            continue
        try:
            attrs = vars(module)
        except TypeError:
            continue
        for attr, value in list(attrs.items()):
            if value is app:
                return f"{name}:{attr}"
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if main is not None and spec is not None and spec.name:
        for attr, value in list(vars(main).items()):
            if value is app:
                return f"{spec.name}:{attr}"
    return None


def run_isolated(
    spec: str,
    task: Task[Any, Any],
    job: Job,
    attempt: int,
    queue: str,
    cancelled: Callable[[], bool],
    on_start: Callable[[subprocess.Popen[bytes]], None],
) -> bytes:
    """Run ``job`` in a new process; return its value as JSON, or raise as the task did.

    Raises :class:`TimeoutError` at the task's ``timeout`` and
    :class:`~sleipnir.Cancelled` when ``cancelled()`` turns true (the process is
    killed in both cases), :class:`Retry` / :class:`Fail` / :class:`Cancelled` as
    the task raised them, and :class:`RemoteError` for anything else it raised.
    """
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    env["SLEIPNIR_WORKER_PID"] = str(os.getpid())  # which worker the job's process serves
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, spec, str(write_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            env=env,
            start_new_session=True,  # its own process group: killed with its children
        )
    finally:
        os.close(write_fd)
    on_start(proc)
    request = Request(
        job.task, job.args, job.kwargs, job.id, queue, attempt, job.headers, os.getpid()
    )
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(msgspec.json.encode(request))
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    limit = task.options.timeout
    deadline = None if limit is None else time.monotonic() + limit
    chunks: list[bytes] = []
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            if cancelled():
                kill(proc)
                raise Cancelled(job.id)
            wait = 0.1
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    kill(proc)
                    raise TimeoutError(
                        f"the job ran over its time limit of {limit} s; its process was killed"
                    )
                wait = min(wait, left)
            ready, _, _ = select.select([pipe], [], [], wait)
            if ready:
                data = pipe.read(65536)
                if not data:
                    break
                chunks.append(data)
    code = proc.wait()
    if not chunks:
        raise ProcessCrashed(_died(code))
    reply = msgspec.json.decode(b"".join(chunks), type=Reply)
    if reply.kind == "ok":
        return bytes(reply.value)
    if reply.kind == "retry":
        raise Retry(reply.after, reply.reason or "retry requested")
    if reply.kind == "fail":
        raise Fail(reply.reason or "failed by the task")
    if reply.kind == "cancelled":
        raise Cancelled(job.id)
    raise RemoteError(reply.reason)


def _died(code: int) -> str:
    """The error of a job whose process ended without a reply."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return (
            f"Crashed: the job's process was killed by {name} (a crash in native code, the "
            "OOM killer, or a kill from outside); the worker and its other jobs were not harmed"
        )
    return (
        f"Crashed: the job's process exited with status {code} without a reply (the task "
        "called os._exit or sys.exit, or its process failed to start; see the worker's log)"
    )


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the job's process group, and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


# -- the child's side -------------------------------------------------------------------

_CHILD = (
    "import os, sys; from sleipnir.isolated import _main; "
    "os._exit(_main(sys.argv[1], int(sys.argv[2])))"
)


def _watch_parent(parent: int) -> None:
    """Exit when the worker that started this process is gone (no orphans)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(3)


def _load(spec: str) -> App:
    from .app import App

    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise ConfigurationError(f"{spec} is not a sleipnir.App")
    return app


def _main(spec: str, fd: int) -> int:
    from .context import Context
    from .job import encode_value

    request = msgspec.json.decode(sys.stdin.buffer.read(), type=Request)
    threading.Thread(target=_watch_parent, args=(request.parent,), daemon=True).start()
    app = _load(spec)
    reply: Reply
    try:
        task = app.get_task(request.task)
        if task.takes_context:
            ctx = Context(
                app, request.job_id, task.name, request.queue, request.attempt, request.headers
            )
            value = task.fn(ctx, *request.args, **request.kwargs)
        else:
            value = task.fn(*request.args, **request.kwargs)
        if inspect.iscoroutine(value):  # an async def task run apart: its own loop here
            value = asyncio.run(value)
        try:
            reply = Reply("ok", msgspec.Raw(encode_value(value)))
        except EncodeError as exc:  # as in the worker: no retry makes it encodable
            reply = Reply("fail", reason=str(exc))
    except Retry as exc:
        reply = Reply("retry", after=exc.after, reason=exc.reason)
    except Fail as exc:
        reply = Reply("fail", reason=exc.reason)
    except Cancelled:
        reply = Reply("cancelled")
    except BaseException as exc:  # every failure of task code is the job's outcome
        try:
            message = str(exc)
        except BaseException as broken:  # a hostile __str__ still gets a reply
            message = f"<its __str__ raised {type(broken).__name__}>"
        head = f"{type(exc).__name__}: {message}"
        tb = "".join(traceback.format_exception(exc)).rstrip()
        reply = Reply("error", reason=f"{head}\n{tb}")
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.encode(reply))
    sys.stdout.flush()
    app.close()
    return 0
