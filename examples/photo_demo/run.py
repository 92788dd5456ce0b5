"""`make demo`: the photo demo, the whole worker pattern on one machine.

1. starts ``sleipnir run photo_tasks:app`` (a supervisor and 2 worker processes),
   ``sleipnir web photo_tasks:app`` (the dashboard) and the producer web app
   (``webapp.py``), each on a free loopback port, on a broker in a temporary
   directory: the embedded SQLite one unless ``SLEIPNIR_BROKER`` names another;
2. generates a few hundred images with Pillow and uploads them all at once over
   HTTP, plus a few requests for a slow monthly report; each answer is a
   ``202 Accepted`` with a status URL;
3. shows the jobs done as they finish and, halfway, kills one worker process with
   SIGKILL (its pid from the supervisor's status file): the supervisor starts a
   new one and the killed worker's jobs run again once their leases run out;
4. checks every accepted job through its status URL and its output files, prints a
   summary, stops every process it started and removes the temporary directory
   (``--keep`` leaves it, with the output images, the logs and the database).

    python examples/photo_demo/run.py [--images 300] [--keep] [--hold] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import loadgen  # beside this file, as photo_tasks and webapp are
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sleipnir import SleipnirError
from sleipnir.brokers.base import redact_url
from sleipnir.supervisor.status import read_status, status_path

HERE = Path(__file__).resolve().parent
SPEC = "photo_tasks:app"
LEASE = 3.0
"""Seconds a worker holds a job between renewals (it renews every third of it): the
jobs of a killed worker come back this long after its last renewal."""

console = Console(highlight=False)


class DemoError(Exception):
    """Something the demo needs did not happen; the message says what."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Processes:
    """The processes the demo starts; each in its own session, so that a Ctrl-C typed
    at the terminal reaches the demo alone, which then stops them in order."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((name, proc, log))
        return proc

    def check(self) -> None:
        """Fail at once, with its log, if a process the demo needs has exited."""
        for name, proc, log in self.started:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                raise DemoError(
                    f"{name} exited with status {proc.returncode}:\n  " + "\n  ".join(tail)
                )

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.check()
            if time.monotonic() > deadline:
                raise DemoError(f"{what}: not after {timeout:.0f} s")
            time.sleep(0.05)

    def stop_all(self) -> None:
        """SIGTERM, newest first (the producer, the dashboard, then the supervisor, which
        stops its workers gracefully); whatever is left after 20 s is killed."""
        for _, proc, _ in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.started.clear()


def healthy(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="images to upload (300)")
    parser.add_argument("--reports", type=int, default=3, help="monthly reports to ask for (3)")
    parser.add_argument("--report-seconds", type=float, default=3.0, help="each report's time")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--concurrency", type=int, default=2, help="jobs at once per worker (2)")
    parser.add_argument("--connections", type=int, default=8, help="HTTP connections (8)")
    parser.add_argument("--timeout", type=float, default=100.0, help="give up after (100 s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--hold", action="store_true", help="keep running until Ctrl-C")
    parser.add_argument("--json", type=Path, help="also write the summary to this file")
    args = parser.parse_args()
    if args.images < 2 or args.processes < 1 or args.reports < 0:
        parser.error("--images must be at least 2, --processes at least 1, --reports >= 0")

    workdir = Path(tempfile.mkdtemp(prefix="sleipnir-photo-demo-"))
    env = dict(os.environ)
    env.setdefault("SLEIPNIR_BROKER", f"sqlite://{workdir / 'jobs.db'}")
    if env["SLEIPNIR_BROKER"].startswith(("amqp:", "amqps:")):
        env.setdefault("SLEIPNIR_RESULTS", f"sqlite://{workdir / 'results.db'}")
    if env["SLEIPNIR_BROKER"].startswith("memory:"):
        print("memory:// keeps jobs inside one process; worker processes cannot share it.")
        return 2
    env.update(
        PHOTO_DEMO_DIR=str(workdir / "data"),
        SLEIPNIR_RUN_DIR=str(workdir / "run"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
    )
    os.environ.update(env)  # this process reads the same broker and result store
    sys.path.insert(0, str(HERE))
    import photo_tasks  # only now: the environment names the broker

    try:  # a bad URL or a broker that is down: say so before starting anything
        photo_tasks.app.broker.stats()
        photo_tasks.app.results.get("none")
    except SleipnirError as exc:
        console.print(f"[bold red]cannot use the broker:[/] {exc}")
        shutil.rmtree(workdir, ignore_errors=True)
        return 2
    procs = Processes(workdir, env)
    summary: dict[str, Any] = {}
    try:
        summary = demo(args, workdir, procs, photo_tasks)
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        if summary.get("ok") and args.hold:
            console.print(f"\n[bold]--hold:[/] all keeps running; dashboard {summary['dashboard']}")
            console.print("Ctrl-C stops it.")
            try:
                while procs.started and all(p.poll() is None for _, p, _ in procs.started):
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
        console.print("stopping the producer, the dashboard and the workers ...")
        procs.stop_all()
        photo_tasks.app.close()
        if summary.get("ok") and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            console.print(f"kept {workdir} (data/, logs/, run/, the database if SQLite)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0 if summary.get("ok") else 1


def demo(args: argparse.Namespace, workdir: Path, procs: Processes, tasks: Any) -> dict[str, Any]:
    app = tasks.app
    python = sys.executable
    output = workdir / "data" / "output"
    console.print(f"[bold]Sleipnir photo demo[/]: broker {redact_url(app.broker_url)}")
    console.print(f"  working directory {workdir}")

    with console.status(f"generating {args.images} images with Pillow ..."):
        images = loadgen.make_images(args.images)
    size_kib = sum(len(data) for data, _ in images) / 1024
    console.print(f"  made {len(images)} images (PNG and JPEG, 800x600), {size_kib:,.0f} KiB")

    # -- start everything ----------------------------------------------------------
    web_port, producer_port = free_port(), free_port()
    status_file = status_path(workdir / "run", SPEC)

    def supervisor_status() -> Any:
        try:
            return read_status(status_file)
        except (OSError, ValueError, TypeError):
            return None

    def workers_running() -> bool:
        state = supervisor_status()
        for c in getattr(state, "children", []):
            if c.state == "FATAL":
                log = workdir / "logs" / f"photo_tasks-app.{c.name}.log"
                tail = log.read_text(errors="replace").splitlines()[-6:] if log.exists() else []
                raise DemoError(f"worker {c.name}: {c.message}\n  " + "\n  ".join(tail))
        return (
            state is not None
            and sum(c.state == "RUNNING" and c.pid is not None for c in state.children)
            == args.processes
        )

    with console.status("starting the workers, the dashboard and the producer ..."):
        supervisor = procs.start(
            "supervisor",
            [python, "-m", "sleipnir", "run", SPEC, "--processes", str(args.processes),
             "-c", str(args.concurrency), "--lease", str(LEASE), "--stop-timeout", "10",
             "--log-dir", str(workdir / "logs")],
        )  # fmt: skip
        procs.start(
            "dashboard",
            [python, "-m", "sleipnir", "web", SPEC, "--port", str(web_port), "--no-access-log"],
        )
        procs.start("producer", [python, str(HERE / "webapp.py"), "--port", str(producer_port)])
        procs.wait_for("the worker processes", workers_running, 30)
        procs.wait_for("the dashboard", healthy(f"http://127.0.0.1:{web_port}/healthz"), 30)
        producer = f"http://127.0.0.1:{producer_port}"
        procs.wait_for("the producer", healthy(f"{producer}/healthz"), 30)

    state = supervisor_status()
    pids = ", ".join(f"{c.name} pid {c.pid}" for c in state.children)
    token = " (log in with $SLEIPNIR_API_TOKEN)" if os.environ.get("SLEIPNIR_API_TOKEN") else ""
    console.print(f"  supervisor pid {supervisor.pid}, workers {pids}")
    console.print(f"  producer   {producer}  POST /upload, POST /reports/YYYY-MM")
    console.print(f"  [bold]dashboard  http://127.0.0.1:{web_port}/[/]{token}")
    if not args.hold:
        console.print("             (--hold keeps it running after the summary)")

    # -- the load ------------------------------------------------------------------------
    reports = [f"2026-{m:02d}" for m in range(1, args.reports + 1)]
    expected = len(images) + len(reports)
    answers: list[loadgen.Answer] = []
    result: dict[str, Any] = {}

    def send() -> None:
        try:
            result["answers"] = asyncio.run(
                loadgen.upload_all(
                    producer,
                    images,
                    reports,
                    concurrency=args.connections,
                    report_seconds=args.report_seconds,
                    on_answer=answers.append,
                )
            )
        except BaseException as exc:  # shown by the main thread
            result["error"] = exc

    console.print(
        f"\nsending {len(images)} uploads and {len(reports)} report requests at once,"
        f" {args.connections} connections"
    )
    began = time.time()
    sender = threading.Thread(target=send, name="uploads", daemon=True)
    sender.start()

    pending: set[str] = set()
    records: dict[str, Any] = {}
    seen_answers = 0
    killed: dict[str, Any] = {}
    restarted: dict[str, Any] = {}
    deadline = time.monotonic() + args.timeout
    columns = (
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        accepted_bar = progress.add_task("requests answered", total=expected)
        done_bar = progress.add_task("jobs done", total=expected)
        while True:
            procs.check()
            if "error" in result:
                raise DemoError(f"the load generator failed: {result['error']!r}")
            new = answers[seen_answers:]
            seen_answers += len(new)
            pending.update(a.job_id for a in new if a.job_id)
            progress.update(accepted_bar, completed=seen_answers)
            for job_id in list(pending):
                record = app.results.get(job_id)
                if record is not None and record.state.finished:
                    records[job_id] = record
                    pending.discard(job_id)
            progress.update(done_bar, completed=len(records))

            if not killed and len(records) >= expected // 2:
                killed = kill_one_worker(supervisor_status())
                progress.console.print(
                    f"[bold red]SIGKILL to worker {killed['name']} (pid {killed['pid']})[/]"
                    f" at {len(records)}/{expected} jobs done; it ran {killed['busy']}"
                )
            if killed and not restarted:
                children = getattr(supervisor_status(), "children", [])
                slot = next((c for c in children if c.name == killed["name"]), None)
                if slot and slot.pid not in (None, killed["pid"]) and slot.state == "RUNNING":
                    restarted = {"name": slot.name, "pid": slot.pid, "at": time.time()}
                    progress.console.print(
                        f"[bold green]the supervisor restarted {slot.name}: pid {slot.pid}[/]"
                        f" {restarted['at'] - killed['at']:.2f} s after the kill"
                    )
            if not sender.is_alive() and not pending and killed and restarted:
                break
            if time.monotonic() > deadline:
                raise DemoError(
                    f"after {args.timeout:.0f} s: {len(pending)} jobs not done,"
                    f" worker killed: {bool(killed)}, restarted: {bool(restarted)}"
                )
            time.sleep(0.1)
    upload_answers, report_answers = result["answers"]
    pids = {name: proc.pid for name, proc, _ in procs.started}
    children = getattr(supervisor_status(), "children", [])
    pids |= {f"worker {c.name}": c.pid for c in children if c.pid}
    pids["killed worker"] = killed["pid"]
    return {"pids": pids, "dashboard": f"http://127.0.0.1:{web_port}/"} | summarize(
        args, began, upload_answers, report_answers, records, killed, restarted,
        supervisor_status(), producer, output,
    )  # fmt: skip


def kill_one_worker(state: Any) -> dict[str, Any]:
    """SIGKILL one worker process named in the status file, a busy one if there is."""
    running = [c for c in (state.children if state else []) if c.state == "RUNNING" and c.pid]
    if not running:
        raise DemoError("no running worker process to kill in the supervisor's status file")
    victim = max(running, key=lambda c: c.busy or 0)
    os.kill(victim.pid, signal.SIGKILL)
    return {"name": victim.name, "pid": victim.pid, "busy": victim.busy or 0, "at": time.time()}


def summarize(
    args: argparse.Namespace,
    began: float,
    upload_answers: list[Any],
    report_answers: list[Any],
    records: dict[str, Any],
    killed: dict[str, Any],
    restarted: dict[str, Any],
    state: Any,
    producer: str,
    output: Path,
) -> dict[str, Any]:
    answers = upload_answers + report_answers
    accepted = [a for a in answers if a.status == 202]
    refused = [a for a in answers if a.status != 202]
    latencies_ms = [a.seconds * 1000 for a in upload_answers if a.status == 202]
    work_s = max(r.finished_at for r in records.values()) - began

    # Checked, not assumed: ask the producer about every accepted job, then look for
    # the files the job says it made.
    states = asyncio.run(loadgen.fetch_states(producer, [a.status_url for a in accepted]))
    succeeded = [s for s in states if s.get("state") == "succeeded"]
    missing = [
        name
        for s in succeeded
        for name in s.get("result", {}).get("outputs", [])
        if not (output / name).is_file()
    ]
    complete = [
        s
        for s in succeeded
        if s.get("result", {}).get("outputs")
        and all((output / n).is_file() for n in s["result"]["outputs"])
    ]
    lost = len(accepted) - len(complete)
    redelivered = sum(1 for s in states if s.get("attempt", 1) > 1)
    restarts = sum(c.restarts for c in state.children) if state else 0
    images_made = len(list(output.glob("*.jpg")))
    summary = {
        "ok": lost == 0 and not refused and restarts >= 1 and not missing,
        "accepted": len(accepted),
        "accepted_uploads": sum(a.status == 202 for a in upload_answers),
        "accepted_reports": sum(a.status == 202 for a in report_answers),
        "refused": len(refused),
        "answer_ms_p50": round(percentile(latencies_ms, 50), 1) if latencies_ms else None,
        "answer_ms_p99": round(percentile(latencies_ms, 99), 1) if latencies_ms else None,
        "work_seconds": round(work_s, 2),
        "jobs_per_second": round(len(records) / work_s, 1) if work_s > 0 else None,
        "succeeded": len(succeeded),
        "restarts": restarts,
        "killed": killed,
        "restarted": restarted,
        "redelivered": redelivered,
        "lost": lost,
        "missing_files": missing,
        "output": str(output),
        "output_images": images_made,
    }
    kept = "" if args.keep else " (removed at exit; --keep keeps them)"
    rows = [
        ("jobs accepted", f"{len(accepted)}: {summary['accepted_uploads']} uploads,"
         f" {summary['accepted_reports']} reports; {len(refused)} refused"),
        ("answer time", f"p50 {summary['answer_ms_p50']} ms, p99"
         f" {summary['answer_ms_p99']} ms (upload stored, job queued, 202)"),
        ("work time", f"{work_s:.2f} s from the first upload to the last job done"),
        ("throughput", f"{summary['jobs_per_second']} jobs/s, {args.processes} worker"
         f" processes x {args.concurrency}"),
        ("restarts", f"{restarts}: {killed.get('name')} pid {killed.get('pid')}"
         f" -> {restarted.get('pid')}"),
        ("redeliveries", f"{redelivered} jobs ran again (attempt > 1)"),
        ("lost", f"{lost} (each job: 'succeeded' at its status URL, its files on disk)"),
        ("output", f"{images_made} images, {len(report_answers)} report(s){kept}"),
        ("", str(output)),
    ]  # fmt: skip
    console.print()
    for label, text in rows:
        console.print(f"  [bold]{label:<14}[/] {text}")
    if missing:
        console.print(f"[bold red]missing output files:[/] {', '.join(missing[:10])}")
    for a in refused[:5]:
        console.print(f"[bold red]refused:[/] {a.status} {a.error}")
    return summary


if __name__ == "__main__":
    sys.exit(main())
