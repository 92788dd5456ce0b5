"""One burst worker drains N no-op jobs from a fresh SQLite file: jobs/s and CPU per job.

For A/B runs of two checkouts (``PYTHONPATH=<tree>/src python bench/sqlite_drain.py``,
alternately): the figure is the worker's alone, start-up and filling excluded.

    python bench/sqlite_drain.py [URL] [N]
"""

from __future__ import annotations

import random
import resource
import sys
import tempfile
import time

from sleipnir import App, Worker


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    app = App(url or f"sqlite:///{tempfile.mkdtemp()}/jobs.db")

    @app.task
    def noop(i: int) -> None:
        return None

    for start in range(0, n, 1000):
        noop.map([(i,) for i in range(start, min(n, start + 1000))])
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    worker = Worker(app, burst=True, concurrency=8, heartbeat=None, rng=random.Random(0))
    worker.run()
    t1, after = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(
        f"{worker.stats.succeeded} jobs: {n / (t1 - t0):,.0f} jobs/s, "
        f"CPU {cpu / n * 1e6:.0f} µs per job"
    )
    app.close()


if __name__ == "__main__":
    main()
