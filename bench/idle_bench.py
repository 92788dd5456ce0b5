"""What idle workers cost their broker: commands (Redis) or transactions (PostgreSQL) per
idle worker per second.

Starts ``--workers`` workers (``sleipnir worker``, heartbeat every 5 s, nothing to do) and
counts what reaches the broker over ``--seconds``:

* Redis: a private ``redis-server`` on a free loopback port; ``INFO commandstats`` before
  and after, per command;
* PostgreSQL: a database of its own on 127.0.0.1:5432 (``BENCH_PG`` to point elsewhere),
  dropped afterwards; ``xact_commit + xact_rollback`` of ``pg_stat_database`` before and
  after (each call is one transaction; the LISTEN connection's waits are not).

    python bench/idle_bench.py [--broker redis|postgres|both] [--workers 6] [--seconds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

APP = """
from sleipnir import App
app = App.from_env()

@app.task
def noop() -> None: ...
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _workers(url: str, count: int, where: Path) -> Iterator[None]:
    (where / "idleapp.py").write_text(APP)
    path = os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "SLEIPNIR_BROKER": url, "PYTHONPATH": path}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sleipnir", "worker", "idleapp:app", "-c", "2"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def _measure(count: Callable[[], dict[str, int]], seconds: float, warmup: float) -> dict[str, int]:
    time.sleep(warmup)  # let every worker start and settle into idling
    before = count()
    time.sleep(seconds)
    after = count()
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }


def redis_idle(workers: int, seconds: float) -> dict[str, float]:
    import redis

    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="sleipnir-idle-"))
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

        def count() -> dict[str, int]:
            stats = client.info("commandstats")
            return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

        with _workers(f"redis://127.0.0.1:{port}/0", workers, tmp):
            calls = _measure(count, seconds, warmup=3.0)
        calls.pop("info", None)  # the bench's own
        return {k: v / workers / seconds for k, v in sorted(calls.items())}
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def postgres_idle(workers: int, seconds: float) -> dict[str, float]:
    import psycopg

    base = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"sleipnir_idle_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = base.rsplit("/", 1)[0] + f"/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="sleipnir-idle-"))
    try:
        with psycopg.connect(base, autocommit=True) as watch:

            def count() -> dict[str, int]:
                watch.execute("SELECT pg_stat_clear_snapshot()")
                row = watch.execute(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                    (name,),
                ).fetchone()
                return {"transactions": int(row[0]) if row else 0}

            with _workers(url, workers, tmp):
                calls = _measure(count, seconds, warmup=4.0)
        return {k: v / workers / seconds for k, v in calls.items()}
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["redis", "postgres", "both"], default="both")
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    runs = {"redis": redis_idle, "postgres": postgres_idle}
    for name, run in runs.items():
        if args.broker not in (name, "both"):
            continue
        per_worker = run(args.workers, args.seconds)
        total = sum(per_worker.values())
        detail = ", ".join(f"{k} {v:.2f}" for k, v in per_worker.items())
        print(f"{name}: {args.workers} idle workers, {total:.2f} per worker per second ({detail})")


if __name__ == "__main__":
    main()
