"""Sleipnir: durable background jobs for Python.

A web request puts a job on a durable queue and answers at once; worker
processes run it behind it and acknowledge it only after it finished.

    from sleipnir import App

    app = App()                     # the embedded SQLite broker in ./sleipnir.db

    @app.task
    def resize(path: str, width: int) -> str: ...

    job = resize.delay("a.jpg", width=200)
    job.result(timeout=30.0)
"""

from __future__ import annotations

from .app import App
from .brokers.base import Broker
from .clock import Clock, SystemClock
from .context import Context
from .errors import (
    BrokerConnectionError,
    BrokerError,
    Cancelled,
    ConfigurationError,
    DecodeError,
    EncodeError,
    Fail,
    InvalidArgumentsError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    KeyReusedError,
    PayloadTooLargeError,
    ResultTimeoutError,
    Retry,
    SleipnirError,
    TaskControl,
    UnknownTaskError,
)
from .hooks import Hook
from .job import Job
from .results import JobState, ResultStore
from .task import JobHandle, Task
from .worker import JobRun, Outcome, Worker
from .workflow import chain, group

__version__ = "0.1.0"

__all__ = [
    "App",
    "Broker",
    "BrokerConnectionError",
    "BrokerError",
    "Cancelled",
    "Clock",
    "ConfigurationError",
    "Context",
    "DecodeError",
    "EncodeError",
    "Fail",
    "Hook",
    "InvalidArgumentsError",
    "Job",
    "JobCancelledError",
    "JobFailedError",
    "JobHandle",
    "JobNotFoundError",
    "JobRun",
    "JobState",
    "KeyReusedError",
    "Outcome",
    "PayloadTooLargeError",
    "ResultStore",
    "ResultTimeoutError",
    "Retry",
    "SleipnirError",
    "SystemClock",
    "Task",
    "TaskControl",
    "UnknownTaskError",
    "Worker",
    "__version__",
    "chain",
    "group",
]
