"""HTTP load check: ``POST /api/jobs`` at concurrency 16 for 10 s on the embedded SQLite broker.

Starts ``sleipnir web MODULE:app --no-access-log`` (one uvicorn process, as deployed)
on a free loopback port over a fresh SQLite file, then a client process of its own
with 16 concurrent keep-alive connections (a minimal asyncio HTTP/1.1 client) that posts
``{"task": "noop", "args": [i]}`` as fast as answers come, for ``--duration``
seconds after a one-second warm-up. Every answer is timed; requests/s counts the
202s, and p50/p99 are those of the 202s. Afterwards the bench checks that the
broker holds exactly as many jobs as 202s were given.

    python bench/http_bench.py [--duration 10] [--concurrency 16] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODULE = '''"""A no-op task for bench/http_bench.py (generated)."""
import os

from sleipnir import App

app = App(broker=os.environ["BENCH_BROKER"])


@app.task
def noop(i: int) -> None:
    return None
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _post_loop(
    port: int, counter: Iterator[int], measure_from: float, stop_at: float, out: dict[str, Any]
) -> None:
    """One keep-alive connection posting jobs back to back (a minimal HTTP/1.1 client:
    httpx's own overhead under asyncio would be measured instead of the server's)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (now := time.perf_counter()) < stop_at:
            body = json.dumps({"task": "noop", "args": [next(counter)]}).encode()
            writer.write(
                b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            took = time.perf_counter() - now
            if now < measure_from:
                continue
            if status == 202:
                out["latencies"].append(took)
            else:
                out["other"][status] = out["other"].get(status, 0) + 1
    finally:
        writer.close()


async def _load(port: int, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies": [], "other": {}}
    counter = itertools.count()
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    await asyncio.gather(
        *(_post_loop(port, counter, measure_from, stop_at, out) for _ in range(concurrency))
    )
    latencies = sorted(out["latencies"])
    return {
        "accepted": len(latencies),
        "other_statuses": out["other"],
        "requests_per_s": len(latencies) / duration,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "max_ms": 1000 * latencies[-1] if latencies else None,
        "posted_total": next(counter),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--client", nargs=3, metavar=("PORT", "CONCURRENCY", "DURATION"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.client:  # the load generator, in a process of its own
        port, concurrency, duration = args.client
        print(json.dumps(asyncio.run(_load(int(port), int(concurrency), 1.0, float(duration)))))
        return 0

    with tempfile.TemporaryDirectory(prefix="sleipnir-http-bench-") as tmp:
        (Path(tmp) / "bench_web_tasks.py").write_text(MODULE)
        broker = f"sqlite:///{tmp}/jobs.db"
        env = {**os.environ, "BENCH_BROKER": broker, "PYTHONPATH": tmp}
        env.pop("SLEIPNIR_API_TOKEN", None)
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "sleipnir", "web", "bench_web_tasks:app",
             "--port", str(port), "--no-access-log"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        err = server.stderr.read().decode() if server.stderr else ""
                        raise SystemExit(f"the server did not start:\n{err}") from None
                    time.sleep(0.05)
            client = subprocess.run(
                [sys.executable, __file__, "--client", str(port), str(args.concurrency),
                 str(args.duration)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            figures: dict[str, Any] = json.loads(client.stdout)
        finally:
            server.terminate()
            server.wait(timeout=30)

        sys.path.insert(0, tmp)
        from sleipnir import App

        app = App(broker=broker)
        stored = sum(s.ready for s in app.broker.stats())
        app.close()
    # Every answer was a 202 and every 202 is a job in the broker (warm-up ones included).
    ok = stored == figures["posted_total"] and not figures["other_statuses"]
    figures |= {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "jobs_stored": stored,
        "check": "ok" if ok else "MISMATCH",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
    }
    print(
        f"POST /api/jobs, SQLite, concurrency {args.concurrency}, {args.duration:.0f} s: "
        f"{figures['requests_per_s']:.0f} requests/s, p50 {figures['p50_ms']:.2f} ms, "
        f"p99 {figures['p99_ms']:.2f} ms (max {figures['max_ms']:.1f} ms); "
        f"{stored} jobs stored for {figures['posted_total']} posts: {figures['check']}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
