"""``isolate=True`` under the real ``sleipnir worker``: the spec it is given reaches the
job's process, and a job's process does not outlive a worker killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import SLEIPNIR, wait_until

pytestmark = pytest.mark.integration

MODULE = """
import os
import time
from pathlib import Path

from sleipnir import App

HERE = Path(__file__).resolve().parent
app = App(broker="sqlite:///{db}")


@app.task(isolate=True)
def forever() -> None:
    (HERE / "job.pid").write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie that no one reaped yet counts as gone: it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_job_process_exits_when_its_worker_is_killed(tmp_path: Path) -> None:
    (tmp_path / "isojobs.py").write_text(MODULE.format(db=tmp_path / "jobs.db"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    enqueue = subprocess.run(
        [str(SLEIPNIR), "enqueue", "isojobs:app", "forever"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert enqueue.returncode == 0, enqueue.stderr
    worker = subprocess.Popen(
        [str(SLEIPNIR), "worker", "isojobs:app", "--lease", "5"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        pid_file = tmp_path / "job.pid"
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30.0, "job never started")
        job_pid = int(pid_file.read_text())
        assert _alive(job_pid)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        wait_until(lambda: not _alive(job_pid), 10.0, "the job's process outlived its worker")
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(timeout=10)
        if worker.stderr is not None:
            worker.stderr.close()
