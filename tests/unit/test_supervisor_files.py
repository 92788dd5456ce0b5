"""What the supervisor writes and prints: the status file, `status`, and `deploy`."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sleipnir.deploy import STOP_MARGIN, DeployOptions, supervisord_program, systemd_unit
from sleipnir.errors import ConfigurationError
from sleipnir.supervisor import Supervisor
from sleipnir.supervisor.states import ProcessConfig
from sleipnir.supervisor.status import (
    ChildStatus,
    SupervisorStatus,
    format_status,
    read_status,
    slug,
    status_path,
    write_status,
)

from .conftest import CliApp


def _status(pid: int, state: str = "running", child_state: str = "FATAL") -> SupervisorStatus:
    return SupervisorStatus(
        app="proj.tasks:app",
        pid=pid,
        state=state,
        started_at=1000.0,
        updated_at=1100.0,
        processes=2,
        min_processes=2,
        max_processes=4,
        children=[
            ChildStatus("w1", "RUNNING", 4242, 1000.0, 1000.0, 0, 0, 120, 3, 8),
            ChildStatus("w2", child_state, None, 1090.0, None, 4, 4, 7, message="FATAL: ..."),
        ],
    )


def test_status_file_round_trip_and_table(tmp_path: Path) -> None:
    path = status_path(tmp_path, "proj.tasks:app")
    assert path.name == "proj.tasks-app.json"
    assert read_status(path) is None
    write_status(path, _status(123))
    back = read_status(path)
    assert back == _status(123)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    table = format_status(back, now=1100.0 + 3725, alive=True).splitlines()
    assert "pid 123" in table[0] and "running" in table[0] and "max 4" in table[0]
    assert table[1].split() == [
        "name", "pid", "state", "uptime", "restarts", "jobs", "done", "busy", "note"
    ]  # fmt: skip
    assert table[2].split() == ["w1", "4242", "RUNNING", "1h03m", "0", "120", "3/8"]
    assert table[3].split()[:6] == ["w2", "-", "FATAL", "-", "4", "7"]
    assert "not running" in format_status(back, now=1100.0, alive=False)


def test_status_file_of_another_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(ValueError, match="version"):
        read_status(path)


def test_slug_is_a_safe_file_name() -> None:
    assert slug("a.b:app") == "a.b-app"
    assert "/" not in slug("../../etc/passwd:x")


def _run_status(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sleipnir", "status", "proj.tasks:app", "--run-dir", str(tmp_path),
         *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_status_command_exit_codes(tmp_path: Path) -> None:
    missing = _run_status(tmp_path)
    assert missing.returncode == 3
    assert "no supervisor of proj.tasks:app" in missing.stdout

    path = status_path(tmp_path, "proj.tasks:app")
    write_status(path, _status(os.getpid(), child_state="STARTING"))  # a live pid
    ok = _run_status(tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "w1" in ok.stdout and "4242" in ok.stdout

    write_status(path, _status(os.getpid(), child_state="FATAL"))
    fatal = _run_status(tmp_path, "--json")
    assert fatal.returncode == 1
    data = json.loads(fatal.stdout)
    assert data["alive"] is True
    assert [c["state"] for c in data["children"]] == ["RUNNING", "FATAL"]

    write_status(path, _status(os.getpid(), state="stopped"))
    assert _run_status(tmp_path).returncode == 3

    path.write_text("{not json")
    broken = _run_status(tmp_path)
    assert broken.returncode == 1
    assert "not a status file" in broken.stderr


# -- deploy -----------------------------------------------------------------------------


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.read_string(text)
    return parser


def test_systemd_unit_timings_fit() -> None:
    unit = _ini(
        systemd_unit(
            DeployOptions(
                "proj.tasks:app",
                processes=4,
                max_processes=8,
                concurrency=6,
                queues=["urgent", "default"],
                stop_timeout=120,
                working_directory=Path("/srv/proj"),
                user="www-data",
            )
        )
    )
    service = unit["Service"]
    stop = float(service["TimeoutStopSec"])
    assert stop > 120 + ProcessConfig().kill_grace  # above the worker's and the supervisor's own
    assert stop == 120 + ProcessConfig().kill_grace + STOP_MARGIN
    assert service["KillMode"] == "mixed"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "always"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["WorkingDirectory"] == "/srv/proj"
    assert service["User"] == "www-data"
    exec_start = service["ExecStart"].split()
    assert exec_start[:5] == [sys.executable, "-m", "sleipnir", "run", "proj.tasks:app"]
    args = " ".join(exec_start)
    for part in ("--processes 4", "--max-processes 8", "-c 6", "--stop-timeout 120",
                 "-Q urgent,default"):  # fmt: skip
        assert part in args
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_supervisord_program_timings_fit() -> None:
    text = supervisord_program(
        DeployOptions("proj.tasks:app", processes=3, stop_timeout=45, working_directory=Path("/a"))
    )
    program = _ini(text)["program:sleipnir-proj.tasks-app"]
    assert float(program["stopwaitsecs"]) == 45 + STOP_MARGIN
    assert program["numprocs"] == "3"
    assert "%(process_num)" in program["process_name"]
    assert program["killasgroup"] == "true"
    assert program["stopasgroup"] == "false"  # the stop reaches the worker, not its jobs' children
    assert program["autorestart"] == "true"
    assert program["stopsignal"] == "TERM"
    assert program["directory"] == "/a"
    assert re.search(r"-m sleipnir worker proj\.tasks:app -c 8 --stop-timeout 45\b", text)


def test_deploy_command(cli: CliApp) -> None:
    unit = cli("deploy", "systemd", "APP", "-p", "2", "--stop-timeout", "10")
    assert unit.exit_code == 0, unit.output
    assert f"TimeoutStopSec={10 + ProcessConfig().kill_grace + STOP_MARGIN:g}" in unit.output
    assert f"run {cli.module} --processes 2" in unit.output
    prog = cli("deploy", "supervisord", "APP", "-p", "2")
    assert prog.exit_code == 0, prog.output
    assert "numprocs=2" in prog.output
    bad = cli("deploy", "supervisord", "APP", "-p", "2", "--max-processes", "4")
    assert bad.exit_code != 0
    assert "fixed number" in bad.output
    below = cli("deploy", "systemd", "APP", "-p", "4", "--max-processes", "2")
    assert below.exit_code != 0
    assert "below --processes" in below.output


def test_run_refuses_an_app_that_does_not_import(cli: CliApp, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = cli("run", "no_such_module_here:app", "--run-dir", str(run_dir))
    assert result.exit_code != 0
    assert "cannot import 'no_such_module_here'" in result.output
    assert not run_dir.exists()  # nothing started, nothing written


def test_run_refuses_a_run_directory_it_cannot_write(cli: CliApp, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("run", "APP", "--run-dir", str(blocker / "run"))
    assert result.exit_code == 1
    assert "cannot use the run directory" in result.output


def test_one_supervisor_per_app_and_run_directory(tmp_path: Path) -> None:
    first = Supervisor("proj.tasks:app", run_dir=tmp_path)
    second = Supervisor("proj.tasks:app", run_dir=tmp_path)
    other_app = Supervisor("proj.other:app", run_dir=tmp_path)
    first._lock()
    try:
        with pytest.raises(
            ConfigurationError, match=rf"another supervisor .* \(pid {os.getpid()}\)"
        ):
            second._lock()
        other_app._lock()  # another app may share the directory
        other_app._unlock()
    finally:
        first._unlock()
    second._lock()  # free again once the first let go
    second._unlock()


def test_supervisor_refuses_nonsense_counts(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="processes must be >= 1"):
        Supervisor("a:app", processes=0, run_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="must be >= processes"):
        Supervisor("a:app", processes=3, max_processes=2, run_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="needs the app"):
        Supervisor("a:app", processes=1, max_processes=2, run_dir=tmp_path)
