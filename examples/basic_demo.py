"""`make demo-basic`: delay() timings, retries and a dead letter on the embedded broker.

1. writes a small tasks module (``demo_tasks.py``) into a fresh temporary directory;
2. enqueues a few hundred jobs with ``delay()``, timing each call: image-resize
   stand-ins that hash a few KiB, uploads that fail once and succeed on retry,
   and one job that always fails;
3. runs two worker processes (``sleipnir worker demo_tasks:app --burst``) until
   the queues are empty;
4. prints what happened, read back from the result store and the dead letters.

The broker is a SQLite file in the temporary directory, unless SLEIPNIR_BROKER
(and SLEIPNIR_RESULTS) name another one (``App.from_env``). The directory is
removed at the end unless the demo failed or ``--keep`` is given.

    python examples/basic_demo.py [--keep]
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESIZES = 300
UPLOADS = 8  # each fails once, then succeeds
WORKERS = 2
CONCURRENCY = 4
TIMEOUT = 60.0  # seconds for the whole drain; the demo needs about one

TASKS = '''"""Tasks of the Sleipnir demo (written by examples/basic_demo.py)."""

import hashlib
from pathlib import Path

from sleipnir import App, Retry

HERE = Path(__file__).resolve().parent

# SLEIPNIR_BROKER names the broker; basic_demo.py sets it for the worker processes.
app = App.from_env()


@app.task(queue="images")
def resize(name: str, width: int) -> dict[str, object]:
    """Stands in for an image resize: hashes a 4 KiB buffer a few hundred times."""
    data = hashlib.sha256(name.encode()).digest() * 128  # 4 KiB
    for _ in range(200):
        data = hashlib.sha256(data).digest() * 128
    return {"name": name, "width": width, "digest": data[:4].hex()}


@app.task(queue="uploads", retries=3)
def upload(name: str) -> str:
    """Fails on its first attempt (say the storage API timed out) and succeeds on the next.

    The attempts are counted in a file, so the count survives the worker process.
    """
    counter = HERE / f"attempts-{name}"
    with counter.open("a") as f:
        f.write("x")
    if counter.stat().st_size == 1:
        raise Retry(after=0, reason=f"storage timed out uploading {name}")
    return f"s3://demo-bucket/{name}"


@app.task(queue="uploads", retries=1, backoff=0)
def parse_exif(name: str) -> None:
    """Always fails: after its one retry the job goes to the dead letters."""
    raise ValueError(f"{name}: not a JPEG file")
'''


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


def run_workers(workdir: Path, env: dict[str, str], round_no: int, timeout: float) -> list[int]:
    """Run WORKERS burst worker processes until they exit; return their exit codes."""
    script = Path(sys.executable).with_name("sleipnir")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "sleipnir"]
    command = [*prefix, "worker", "demo_tasks:app", "--burst", "-c", str(CONCURRENCY)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(WORKERS):
            with (workdir / f"worker-{round_no}-{n}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=log)
                )
        deadline = time.monotonic() + timeout
        return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:  # only if something went wrong: a timeout or Ctrl-C
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def worker_counts(workdir: Path) -> list[str]:
    """The last line each worker logged: how many jobs it ran."""
    lines = []
    for log in sorted(workdir.glob("worker-*.log")):
        match = re.search(r"worker (\d+) stopped: (.*)", log.read_text(errors="replace"))
        if match:
            lines.append(f"worker {match[1]}: {match[2]}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sleipnir-demo-"))
    (workdir / "demo_tasks.py").write_text(TASKS)
    if not os.environ.get("SLEIPNIR_BROKER"):
        os.environ["SLEIPNIR_BROKER"] = f"sqlite://{workdir / 'jobs.db'}"
    sys.path.insert(0, str(workdir))
    demo: Any = importlib.import_module("demo_tasks")  # the module the workers import too
    app = demo.app
    if app.broker_url.startswith("memory:"):
        print("memory:// keeps jobs inside one process; worker processes cannot share it.")
        return 2
    # The workers get the URLs as this process resolved them (a relative sqlite path
    # is pinned to the working directory here, and the workers run in workdir).
    env = dict(
        os.environ,
        SLEIPNIR_BROKER=app.broker_url,
        SLEIPNIR_RESULTS=app.results_url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")])),
    )
    print(f"broker:  {app.broker_url}")
    print(f"workdir: {workdir}")

    ok = False
    try:
        ok = demo_run(app, demo, workdir, env)
    finally:
        app.close()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (tasks module, worker logs, the database if SQLite)")
    return 0 if ok else 1


def demo_run(app: Any, demo: Any, workdir: Path, env: dict[str, str]) -> bool:
    # -- enqueue ----------------------------------------------------------------
    latencies_us: list[float] = []
    handles = []
    kinds: dict[str, str] = {}

    def timed_delay(task: Any, *args: Any, **kwargs: Any) -> None:
        began = time.perf_counter_ns()
        handle = task.delay(*args, **kwargs)
        latencies_us.append((time.perf_counter_ns() - began) / 1000)
        handles.append(handle)
        kinds[handle.id] = task.name

    began = time.perf_counter()
    for i in range(RESIZES):
        timed_delay(demo.resize, f"photo-{i:04d}.jpg", width=200)
    for i in range(UPLOADS):
        timed_delay(demo.upload, f"album-{i}.zip")
    timed_delay(demo.parse_exif, "notes.txt")
    enqueue_s = time.perf_counter() - began
    latencies_us.sort()
    print(
        f"\nenqueued {len(handles)} jobs ({RESIZES} resize, {UPLOADS} upload, 1 parse_exif)"
        f" in {enqueue_s * 1000:.0f} ms: delay() p50 {percentile(latencies_us, 50):.0f} µs,"
        f" p99 {percentile(latencies_us, 99):.0f} µs, max {latencies_us[-1]:.0f} µs"
    )

    # -- drain --------------------------------------------------------------------
    print(
        f"running {WORKERS} worker processes:"
        f" sleipnir worker demo_tasks:app --burst -c {CONCURRENCY}"
    )
    began = time.perf_counter()
    codes: list[int] = []
    pending = handles
    round_no = 0
    while pending and time.perf_counter() - began < TIMEOUT:
        round_no += 1
        codes += run_workers(workdir, env, round_no, TIMEOUT - (time.perf_counter() - began))
        pending = [h for h in pending if not h.status().finished]
        if not pending:
            break
        # --burst exits when no job is *ready*; a retry due later is not ready yet.
        print(f"  {len(pending)} jobs still waiting (retries not due yet): another round")
        time.sleep(0.2)
    drain_s = time.perf_counter() - began
    for line in worker_counts(workdir):
        print(f"  {line}")
    print(
        f"drained in {drain_s:.2f} s: {len(handles) / drain_s:,.0f} jobs/s"
        f" (worker start-up included), exit codes {codes}"
    )

    # -- what happened, from the result store ----------------------------------------
    by_state: dict[str, int] = {}
    attempts: dict[str, list[int]] = {}
    retried = 0
    for h in handles:
        record = app.results.get(h.id)  # state and attempt of the job's last run
        state = record.state.value if record else h.status().value
        by_state[state] = by_state.get(state, 0) + 1
        if record is not None:
            attempts.setdefault(kinds[h.id], []).append(record.attempt)
            retried += record.state == "succeeded" and record.attempt > 1
    succeeded = by_state.get("succeeded", 0)
    failed = by_state.get("failed", 0)
    print(
        f"\noutcomes: {succeeded} succeeded ({retried} of them on a retry),"
        f" {failed} failed, {len(handles) - succeeded - failed} unfinished"
    )
    for kind, tries in sorted(attempts.items()):
        print(
            f"  {kind:<10} {len(tries):>3} jobs, attempts per job: "
            f"min {min(tries)}, mean {statistics.fmean(tries):.2f}, max {max(tries)}"
        )
    ours = {h.id for h in handles}
    dead = [d for d in app.broker.dead_letters(limit=1000) if d.id in ours]
    print(f"dead letters: {len(dead)}")
    for d in dead:
        # The reason is the error, its traceback, and a last line on the retries used up.
        lines = d.reason.splitlines()
        said = lines[0] + (f" {lines[-1]}" if len(lines) > 1 and lines[-1].startswith("(") else "")
        print(f"  {d.id} {kinds[d.id]} (queue {d.queue}, attempt {d.attempt}): {said}")
    print(f"a result: resize -> {handles[0].result(timeout=5.0)}")
    print(f"          upload -> {handles[RESIZES].result(timeout=5.0)}")

    expected = {
        "succeeded": RESIZES + UPLOADS,
        "retried": UPLOADS,
        "failed": 1,
        "dead": 1,
        "codes": [0] * len(codes),
    }
    seen = {
        "succeeded": succeeded,
        "retried": retried,
        "failed": failed,
        "dead": len(dead),
        "codes": codes,
    }
    if seen != expected:
        print(f"\nUNEXPECTED: {seen} (expected {expected})")
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
