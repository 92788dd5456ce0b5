"""``sleipnir top``: a live terminal view of queues, throughput, wait and run times, workers
and host CPU steal, drawn with rich from the broker's stats and the workers' heartbeats."""

from __future__ import annotations

import time
from typing import Any

from .app import App
from .errors import SleipnirError
from .monitor import (
    merged_tasks,
    read_beats,
    read_history,
    steal_is_sustained,
    throughput_series,
)
from .results import Capability
from .views import format_span

__all__ = ["render", "run_top"]

STEAL_THRESHOLD = 0.01


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    return f"{value / 60:.1f}m"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def render(app: App) -> Any:
    """One frame of the view, as a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = app.clock.time()
    parts: list[Any] = []
    try:
        stats = app.broker.stats()
    except SleipnirError as exc:
        stats = []
        parts.append(Text(f"broker unreachable: {exc}", style="bold red"))
    lacks = app.results.lacks(Capability.BEATS)
    try:
        if lacks is not None:
            beats, history, note = [], [], f"no heartbeats on this result store: {lacks}"
        else:
            beats = read_beats(app.results)
            history = read_history(app.results, now - 120.0)
            note = ""
    except SleipnirError as exc:
        beats, history, note = [], [], f"result store unreachable: {exc}"

    per_minute = throughput_series(history, now - 60.0, now, 60.0)
    done = sum(v for _, v in per_minute["succeeded"])
    failed = sum(v for _, v in per_minute["failed"])
    retried = sum(v for _, v in per_minute["retried"])
    live = [b for b in beats if not b.stopping]
    parts.insert(
        0,
        Text.assemble(
            ("sleipnir top", "bold"),
            f"  {time.strftime('%H:%M:%S', time.gmtime(now))} UTC  ",
            f"last minute: {done / 60:.1f} jobs/s succeeded, {failed / 60:.2f}/s failed, "
            f"{retried / 60:.2f}/s retried  ·  {len(live)} workers",
        ),
    )
    if note:
        parts.append(Text(note, style="yellow"))

    queues = Table(title="queues", title_justify="left", expand=True)
    for name in ("queue", "ready", "scheduled", "running", "dead", "oldest ready", "due in"):
        queues.add_column(name, justify="left" if name == "queue" else "right")
    for s in stats:
        age = None if s.oldest_ready_at is None else max(0.0, now - s.oldest_ready_at)
        # When the next scheduled job comes due, kept short to fit 80 columns.
        due = None if s.next_scheduled_at is None else s.next_scheduled_at - now
        queues.add_row(
            s.queue,
            str(s.ready),
            str(s.scheduled),
            str(s.running),
            Text(str(s.dead), style="red" if s.dead else ""),
            _seconds(age),
            format_span(due),
        )
    parts.append(queues)

    tasks = Table(title="tasks (live workers)", title_justify="left", expand=True)
    figures = merged_tasks(beats)
    # The table is full on an 80-column terminal: cancelled only once a job was cancelled.
    cancelled = any(f.cancelled for f in figures)
    for name in ("task", "queue", "ok", "failed", "retried", *(["cancelled"] if cancelled else []),
                 "wait p50", "wait p95", "run p50", "run p95"):  # fmt: skip
        tasks.add_column(name, justify="left" if name in ("task", "queue") else "right")
    for f in figures:
        tasks.add_row(
            f.task,
            f.queue,
            str(f.succeeded),
            str(f.failed),
            str(f.retried),
            *([str(f.cancelled)] if cancelled else []),
            _seconds(f.wait.quantile(0.5)),
            _seconds(f.wait.quantile(0.95)),
            _seconds(f.duration.quantile(0.5)),
            _seconds(f.duration.quantile(0.95)),
        )
    parts.append(tasks)

    workers = Table(title="workers", title_justify="left", expand=True)
    for name in ("worker", "queues", "busy", "ok", "failed", "beat"):
        workers.add_column(name, justify="left" if name in ("worker", "queues") else "right")
    for b in beats:
        workers.add_row(
            b.worker_id + (" (stopped)" if b.stopping else ""),
            ",".join(b.queues),
            f"{b.busy}/{b.concurrency}",
            str(b.succeeded),
            str(b.failed),
            _seconds(max(0.0, now - b.at)) + " ago",
        )
    parts.append(workers)

    hosts = Table(title="hosts", title_justify="left", expand=True)
    for name in ("host", "steal", "user", "system", "iowait", "load", "memory"):
        hosts.add_column(name, justify="left" if name == "host" else "right")
    latest = {b.host: b for b in sorted(beats, key=lambda b: b.at)}
    for host, beat in sorted(latest.items()):
        h = beat.host_figures
        samples = [p.sample for p in history if p.sample.host == host]
        flagged = steal_is_sustained(samples, now, window=60.0, threshold=STEAL_THRESHOLD)
        steal = h.cpu_steal if h else None
        hosts.add_row(
            host + (" STEAL" if flagged else ""),
            Text(_pct(steal), style="bold red" if (steal or 0) >= STEAL_THRESHOLD else ""),
            _pct(h.cpu_user if h else None),
            _pct(h.cpu_system if h else None),
            _pct(h.cpu_iowait if h else None),
            "-" if h is None or h.load1 is None else f"{h.load1:.2f}",
            _pct(h.memory_used_ratio if h else None),
        )
    parts.append(hosts)
    return Group(*parts)


def run_top(app: App, *, interval: float = 2.0, once: bool = False) -> None:
    """Draw the view every ``interval`` seconds until Ctrl-C (or once, with ``once``)."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if once:
        console.print(render(app))
        return
    with Live(render(app), console=console, screen=False, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(app), refresh=True)
        except KeyboardInterrupt:
            pass
