"""`make bench`, RabbitMQ part: Sleipnir on RabbitMQ, and Celery on the same server beside it.

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest; ``BENCH_AMQP`` to point elsewhere).
Every queue it declares carries a random prefix and is deleted at the end.

Sleipnir (``amqp://...?prefix=<random>``, results in SQLite in a temp dir):

* single enqueue: ``noop.delay(i)``, each call timed; returns after the publisher confirm;
* bulk enqueue: ``noop.map`` in batches of 1,000 (one AMQP transaction per batch);
* drain: no-op jobs enqueued with ``map``, then ONE worker process
  (``sleipnir worker MODULE:app --burst -c 8``) timed from its start to its exit;
  afterwards every result must say ``succeeded`` and the queue be empty;
* round trip: with one worker running (``-c 8``), ``noop.delay(i).result(poll_interval=0.001)``
  one at a time.

Celery 5 (py-amqp transport, ``confirm_publish``, ``task_acks_late``, durable queue):

* single enqueue: ``noop.delay(i)``;
* drain: the same number of jobs (``ignore_result``), then ``celery worker -P threads -c 8``
  timed from its start until the job enqueued last has run (it touches a file);
* round trip: ``noop.delay(i).get()`` with the ``rpc://`` result backend.

    python bench/amqp_bench.py [--quick] [--json PATH] [--no-celery]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sleipnir import App, Task

AMQP = os.environ.get("BENCH_AMQP", "guest:guest@127.0.0.1:5672")

SLEIPNIR_MODULE = '''"""No-op task for bench/amqp_bench.py (generated)."""
import os

from sleipnir import App

app = App(broker=os.environ["BENCH_BROKER"], results=os.environ["BENCH_RESULTS"])


@app.task
def noop(i: int) -> int:
    return i
'''

CELERY_MODULE = '''"""No-op tasks for bench/amqp_bench.py, Celery side (generated)."""
import os
from pathlib import Path

from celery import Celery

app = Celery("bench_celery", broker=os.environ["BENCH_CELERY_BROKER"], backend="rpc://")
app.conf.update(
    task_acks_late=True,  # ack after the task ran, as Sleipnir does
    broker_transport_options={"confirm_publish": True},  # delay() waits for the confirm
    task_default_queue=os.environ["BENCH_CELERY_QUEUE"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task
def noop(i):
    return i


@app.task(ignore_result=True)
def drain_noop(i, last=None):
    if last:
        Path(last).touch()
'''


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    rank = min(len(sorted_values), max(1, math.ceil(q / 100 * len(sorted_values))))
    return float(sorted_values[rank - 1])


def timed_calls(call: Callable[[int], Any], n: int, warmup: int) -> dict[str, Any]:
    for i in range(warmup):
        call(i)
    samples = [0] * n
    began = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter_ns()
        call(i)
        samples[i] = time.perf_counter_ns() - t0
    wall = time.perf_counter() - began
    samples.sort()
    us = [s / 1000 for s in samples]
    return {
        "calls": n,
        "per_s": n / wall,
        "p50_us": percentile(us, 50),
        "p99_us": percentile(us, 99),
    }


def bin_of(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@contextlib.contextmanager
def spawned(argv: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with (cwd / "worker.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


# -- Sleipnir -------------------------------------------------------------------------


class SleipnirBench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self.url = f"amqp://{AMQP}/%2F?prefix={self.prefix}"
        self.results = f"sqlite://{tmp}/results.db"
        (tmp / "bench_tasks.py").write_text(SLEIPNIR_MODULE)
        self.env = dict(
            os.environ,
            BENCH_BROKER=self.url,
            BENCH_RESULTS=self.results,
            PYTHONPATH=os.pathsep.join(p for p in (str(tmp), os.environ.get("PYTHONPATH")) if p),
        )

    def app(self) -> tuple[App, Task[[int], int]]:
        app = App(broker=self.url, results=self.results)

        @app.task
        def noop(i: int) -> int:
            return i

        return app, noop

    def worker(self, *args: str) -> list[str]:
        return [bin_of("sleipnir"), "worker", "bench_tasks:app", "-c", "8", *args]

    def run(self, n_single: int, n_drain: int, n_round: int) -> dict[str, Any]:
        app, noop = self.app()
        try:
            out: dict[str, Any] = {}
            out["single"] = timed_calls(noop.delay, n_single, warmup=100)
            app.broker.purge("default")
            began = time.perf_counter()
            for start in range(0, n_drain, 1000):
                noop.map([(i,) for i in range(start, min(n_drain, start + 1000))])
            out["bulk"] = {"jobs": n_drain, "per_s": n_drain / (time.perf_counter() - began)}
            began = time.perf_counter()
            code = subprocess.run(
                self.worker("--burst"), cwd=self.tmp, env=self.env, capture_output=True
            )
            seconds = time.perf_counter() - began
            if code.returncode != 0:
                raise RuntimeError(code.stderr.decode(errors="replace")[-3000:])
            [stats] = [s for s in app.broker.stats() if s.queue == "default"]
            if (stats.ready, stats.dead) != (0, 0):
                raise RuntimeError(f"drain left {stats}")
            out["drain"] = {"jobs": n_drain, "seconds": seconds, "per_s": n_drain / seconds}
            with spawned(self.worker(), self.tmp, self.env):
                noop.delay(-1).result(timeout=30)  # the worker is up and consuming
                # result() polls the result store; a 1 ms poll measures the jobs' way,
                # not the default poll's back-off (5 ms growing to 250 ms).
                out["round_trip"] = timed_calls(
                    lambda i: noop.delay(i).result(timeout=30, poll_interval=0.001),
                    n_round,
                    warmup=20,
                )
            return out
        finally:
            app.broker.delete_queues()  # type: ignore[attr-defined]
            app.close()


# -- Celery ---------------------------------------------------------------------------


class CeleryBench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.queue = f"bench-celery-{uuid.uuid4().hex[:10]}"
        (tmp / "bench_celery.py").write_text(CELERY_MODULE)
        self.env = dict(
            os.environ,
            BENCH_CELERY_BROKER=f"pyamqp://{AMQP}//",
            BENCH_CELERY_QUEUE=self.queue,
            PYTHONPATH=os.pathsep.join(p for p in (str(tmp), os.environ.get("PYTHONPATH")) if p),
        )

    def worker(self) -> list[str]:
        argv = [bin_of("celery"), "-A", "bench_celery", "worker", "-P", "threads", "-c", "8"]
        return [*argv, "-l", "WARNING", "--without-gossip", "--without-mingle"]

    def run(self, n_single: int, n_drain: int, n_round: int) -> dict[str, Any]:
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("BENCH_CELERY_")})
        sys.path.insert(0, str(self.tmp))
        import bench_celery  # type: ignore[import-not-found]

        out: dict[str, Any] = {}
        try:
            out["single"] = timed_calls(bench_celery.drain_noop.delay, n_single, warmup=100)
            last = self.tmp / "last-ran"
            for i in range(n_drain - n_single - 100 - 1):
                bench_celery.drain_noop.delay(i)
            bench_celery.drain_noop.delay(-1, last=str(last))
            began = time.perf_counter()
            with spawned(self.worker(), self.tmp, self.env):
                wait_for(last.exists, 300, "Celery to run the last job")
                seconds = time.perf_counter() - began
                out["drain"] = {"jobs": n_drain, "seconds": seconds, "per_s": n_drain / seconds}
                bench_celery.noop.delay(-1).get(timeout=30)
                out["round_trip"] = timed_calls(
                    lambda i: bench_celery.noop.delay(i).get(timeout=30), n_round, warmup=20
                )
            return out
        finally:
            with bench_celery.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.queue)
            bench_celery.app.close()


# -- report ---------------------------------------------------------------------------


def print_report(results: dict[str, dict[str, Any]]) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"RabbitMQ at {AMQP.split('@')[-1]}, {os.cpu_count()} CPUs, load average {load}")
    header = f"{'':34} {'single delay()':>24} {'bulk map()':>12} {'drain, 1 worker':>18} "
    print(header + f"{'round trip':>24}")
    for name, r in results.items():
        s, d, rt = r["single"], r["drain"], r["round_trip"]
        bulk = f"{r['bulk']['per_s']:,.0f}/s" if "bulk" in r else "n/a"
        print(
            f"{name:34} {s['per_s']:>8,.0f}/s p50 {s['p50_us'] / 1000:5.2f} ms "
            f"{bulk:>12} {d['per_s']:>16,.0f}/s "
            f"p50 {rt['p50_us'] / 1000:5.2f} ms p99 {rt['p99_us'] / 1000:5.2f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-celery", action="store_true", help="Sleipnir only")
    args = parser.parse_args()
    n_single, n_drain, n_round = (300, 2_000, 100) if args.quick else (2_000, 20_000, 500)
    host, _, port = AMQP.rpartition("@")[2].partition(":")
    try:
        socket.create_connection((host, int(port or 5672)), timeout=2).close()
    except OSError as exc:
        print(f"*** SKIPPING the RabbitMQ benchmark: nothing answers on {host}:{port} ({exc})")
        return 0
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sleipnir-amqp-bench-") as tmp:
        results["Sleipnir (amqp://, results in SQLite)"] = SleipnirBench(Path(tmp)).run(
            n_single, n_drain, n_round
        )
    if not args.no_celery:
        try:
            import celery  # noqa: F401
        except ImportError:
            print("Celery is not installed (pip install -e '.[bench]'): its row is left out")
        else:
            with tempfile.TemporaryDirectory(prefix="sleipnir-amqp-bench-celery-") as tmp:
                results["Celery 5 (pyamqp://, rpc:// results)"] = CeleryBench(Path(tmp)).run(
                    n_single, n_drain, n_round
                )
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
