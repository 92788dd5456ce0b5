"""The supervisor's state machine and scaling rule, driven by a fake clock."""

from __future__ import annotations

import logging

import pytest

from sleipnir.supervisor.runner import retire_first
from sleipnir.supervisor.scaling import ScalePolicy, ScaleState, scale
from sleipnir.supervisor.states import (
    Action,
    Event,
    Exited,
    Kill,
    Log,
    Process,
    ProcessConfig,
    ProcessState,
    Ready,
    SendKill,
    SendStop,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    Stop,
    Tick,
    backoff_after,
    next_deadline,
    transition,
)
from sleipnir.testing import FakeClock

S = ProcessState
CONFIG = ProcessConfig(startsecs=1.0, startretries=3, backoff=1.0, max_backoff=60.0)


class Driver:
    """One process fed events at the fake clock's time; spawns answered with new pids."""

    def __init__(self, clock: FakeClock, config: ProcessConfig = CONFIG) -> None:
        self.clock = clock
        self.config = config
        self.proc = Process(name="w1")
        self.actions: list[Action] = []
        self.next_pid = 100
        self.spawn_times: list[float] = []

    def feed(self, event: Event) -> list[Action]:
        self.proc, actions = transition(self.proc, event, self.clock.time(), self.config)
        self.actions += actions
        for action in actions:
            if isinstance(action, Spawn):
                self.spawn_times.append(self.clock.time())
                self.next_pid += 1
                self.feed(Spawned(self.next_pid))
        return actions

    def logs(self, level: int) -> list[str]:
        return [a.message for a in self.actions if isinstance(a, Log) and a.level == level]


@pytest.fixture
def d(clock: FakeClock) -> Driver:
    return Driver(clock)


def test_start_spawns_then_running_after_startsecs(d: Driver, clock: FakeClock) -> None:
    d.feed(Start())
    assert d.proc.state is S.STARTING
    assert d.proc.pid == 101
    assert next_deadline(d.proc, CONFIG) == clock.time() + 1.0
    clock.advance(0.9)
    d.feed(Tick())
    assert d.proc.state is S.STARTING
    clock.advance(0.1)
    d.feed(Tick())
    assert d.proc.state is S.RUNNING
    assert d.proc.failures == 0
    assert next_deadline(d.proc, CONFIG) is None


def test_ready_makes_it_running_before_startsecs(d: Driver, clock: FakeClock) -> None:
    d.feed(Start())
    clock.advance(0.2)
    d.feed(Ready())
    assert d.proc.state is S.RUNNING
    # An exit now is a crash of a running process: restarted at once, no backoff.
    clock.advance(0.1)
    d.feed(Exited(-9))
    assert d.proc.state is S.STARTING
    assert d.proc.pid == 102
    assert d.proc.restarts == 1
    assert d.spawn_times[-1] == clock.time()
    assert d.proc.last_exit == -9


def test_running_process_that_exits_passes_through_exited_and_restarts(
    d: Driver, clock: FakeClock
) -> None:
    d.feed(Start())
    clock.advance(1.0)
    d.feed(Tick())
    d.feed(Ready())  # said ready after startsecs: forgiven all the same
    proc, actions = transition(d.proc, Exited(0), clock.time(), CONFIG)
    assert proc.state is S.EXITED
    assert proc.pid is None
    assert Spawn() in actions
    assert any(isinstance(a, Log) and "exited with status 0" in a.message for a in actions)
    proc, _ = transition(proc, Spawned(555), clock.time(), CONFIG)
    assert proc.state is S.STARTING
    assert proc.pid == 555


def test_crash_loop_at_start_backs_off_growing_then_fatal(d: Driver, clock: FakeClock) -> None:
    d.feed(Start())
    delays = []
    for _ in range(CONFIG.startretries):
        clock.advance(0.1)  # dies before startsecs, without saying it is ready
        d.feed(Exited(1))
        assert d.proc.state is S.BACKOFF
        delay = d.proc.retry_at - clock.time()  # type: ignore[operator]
        delays.append(delay)
        # Nothing happens before the delay is over: no hot loop.
        clock.advance(delay - 0.01)
        d.feed(Tick())
        assert d.proc.state is S.BACKOFF
        clock.advance(0.01)
        d.feed(Tick())
        assert d.proc.state is S.STARTING
    assert delays == [1.0, 2.0, 4.0]
    clock.advance(0.1)
    d.feed(Exited(1))
    assert d.proc.state is S.FATAL
    assert d.proc.failures == CONFIG.startretries + 1
    assert len(d.spawn_times) == CONFIG.startretries + 1
    (fatal,) = d.logs(logging.ERROR)
    assert "FATAL" in fatal and "4 times" in fatal
    assert "FATAL" in d.proc.message
    # FATAL stays FATAL whatever time passes.
    clock.advance(3600)
    assert d.feed(Tick()) == []
    assert d.proc.state is S.FATAL
    # Until someone starts it again: failures forgotten.
    d.feed(Start())
    assert d.proc.state is S.STARTING
    assert d.proc.failures == 0


def test_a_start_that_fails_after_startsecs_still_counts(d: Driver, clock: FakeClock) -> None:
    d.feed(Start())
    d.feed(Exited(1))
    clock.advance(1.0)
    d.feed(Tick())
    assert d.proc.state is S.STARTING
    clock.advance(1.0)
    d.feed(Tick())
    assert d.proc.state is S.RUNNING  # up for startsecs, as supervisord shows it
    assert d.proc.failures == 1  # but not forgiven: it never said it is ready
    clock.advance(0.5)
    d.feed(Exited(1))  # the import failed late
    assert d.proc.state is S.BACKOFF
    assert d.proc.failures == 2
    assert d.proc.retry_at == clock.time() + 2.0


def test_reaching_running_resets_the_failure_count(d: Driver, clock: FakeClock) -> None:
    d.feed(Start())
    d.feed(Exited(1))
    clock.advance(1.0)
    d.feed(Tick())
    d.feed(Exited(1))
    assert d.proc.failures == 2
    clock.advance(2.0)
    d.feed(Tick())
    d.feed(Ready())
    assert d.proc.state is S.RUNNING
    assert d.proc.failures == 0


def test_backoff_is_capped() -> None:
    config = ProcessConfig(backoff=1.0, max_backoff=10.0)
    assert [backoff_after(n, config) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_spawn_failure_counts_as_a_failed_start(d: Driver, clock: FakeClock) -> None:
    proc, actions = transition(d.proc, Start(), clock.time(), CONFIG)
    assert actions == [Spawn()]
    proc, _ = transition(proc, SpawnFailed("no such file"), clock.time(), CONFIG)
    assert proc.state is S.BACKOFF
    assert proc.failures == 1
    assert "no such file" in proc.message


def test_stop_asks_then_kills_after_the_timeout(d: Driver, clock: FakeClock) -> None:
    config = ProcessConfig(stop_timeout=5.0, kill_grace=2.0)
    d.config = config
    d.feed(Start())
    d.feed(Ready())
    pid = d.proc.pid
    assert d.feed(Stop()) == [SendStop(pid)]  # type: ignore[arg-type]
    assert d.proc.state is S.STOPPING
    assert next_deadline(d.proc, config) == clock.time() + 7.0
    clock.advance(6.9)
    assert d.feed(Tick()) == []
    clock.advance(0.1)
    actions = d.feed(Tick())
    assert SendKill(pid) in actions  # type: ignore[arg-type]
    assert d.feed(Tick()) == []  # killed once, not again and again
    d.feed(Exited(-9))
    assert d.proc.state is S.STOPPED
    assert d.proc.pid is None
    # A stopped process is not restarted.
    clock.advance(100)
    assert d.feed(Tick()) == []
    assert d.proc.state is S.STOPPED


def test_stop_in_backoff_or_fatal_just_stops(d: Driver, clock: FakeClock) -> None:
    d.feed(Start())
    d.feed(Exited(1))
    assert d.proc.state is S.BACKOFF
    assert d.feed(Stop()) == []
    assert d.proc.state is S.STOPPED
    clock.advance(100)
    d.feed(Tick())
    assert d.proc.state is S.STOPPED
    assert len(d.spawn_times) == 1


def test_kill_while_stopping_sends_sigkill_at_once(d: Driver, clock: FakeClock) -> None:
    d.feed(Start())
    d.feed(Ready())
    pid = d.proc.pid
    d.feed(Stop())
    assert d.feed(Kill()) == [SendKill(pid)]  # type: ignore[arg-type]
    assert d.proc.state is S.STOPPING
    assert next_deadline(d.proc, CONFIG) is None


def test_stale_events_change_nothing(d: Driver, clock: FakeClock) -> None:
    assert d.feed(Exited(0)) == []
    assert d.feed(Ready()) == []
    assert d.feed(Spawned(7)) == []
    assert d.proc.state is S.STOPPED


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="startsecs"):
        ProcessConfig(startsecs=-1)
    with pytest.raises(ValueError, match="stop_timeout"):
        ProcessConfig(stop_timeout=float("nan"))
    with pytest.raises(ValueError, match="startretries"):
        ProcessConfig(startretries=-1)


# -- scaling ----------------------------------------------------------------------------

POLICY = ScalePolicy(up_lag=10.0, quiet_lag=1.0, down_after=60.0, cooldown=5.0)


def test_scale_up_one_at_a_time_while_the_backlog_is_old(clock: FakeClock) -> None:
    state = ScaleState()
    n, state = scale(2, 2, 4, 30.0, clock.time(), state, POLICY)
    assert n == 3
    n, state = scale(n, 2, 4, 30.0, clock.advance(1.0), state, POLICY)
    assert n == 3  # cooldown
    n, state = scale(n, 2, 4, 30.0, clock.advance(4.0), state, POLICY)
    assert n == 4
    n, state = scale(n, 2, 4, 30.0, clock.advance(60.0), state, POLICY)
    assert n == 4  # the maximum


def test_young_backlog_does_not_scale(clock: FakeClock) -> None:
    n, _ = scale(2, 2, 4, 9.0, clock.time(), ScaleState(), POLICY)
    assert n == 2


def test_scale_down_after_a_quiet_period_to_the_minimum(clock: FakeClock) -> None:
    state = ScaleState()
    n, state = scale(4, 2, 4, None, clock.time(), state, POLICY)
    assert n == 4
    n, state = scale(n, 2, 4, 0.5, clock.advance(59.0), state, POLICY)
    assert n == 4
    n, state = scale(n, 2, 4, None, clock.advance(1.0), state, POLICY)
    assert n == 3
    # The quiet period starts again after a change.
    n, state = scale(n, 2, 4, None, clock.advance(30.0), state, POLICY)
    assert n == 3
    n, state = scale(n, 2, 4, None, clock.advance(30.0), state, POLICY)
    assert n == 2
    n, state = scale(n, 2, 4, None, clock.advance(600.0), state, POLICY)
    assert n == 2


def test_a_busy_moment_restarts_the_quiet_period(clock: FakeClock) -> None:
    state = ScaleState()
    n, state = scale(3, 2, 4, None, clock.time(), state, POLICY)
    n, state = scale(n, 2, 4, 5.0, clock.advance(50.0), state, POLICY)  # not quiet
    n, state = scale(n, 2, 4, None, clock.advance(20.0), state, POLICY)
    assert n == 3
    assert state.quiet_since == clock.time()


def test_out_of_range_counts_come_back_inside(clock: FakeClock) -> None:
    assert scale(1, 2, 4, None, clock.time(), ScaleState(), POLICY)[0] == 2
    assert scale(6, 2, 4, 100.0, clock.time(), ScaleState(), POLICY)[0] == 4


def test_scaling_down_retires_what_serves_least() -> None:
    running = [Process(name=f"w{i}", state=S.RUNNING) for i in (1, 2, 3)]
    backoff = Process(name="w4", state=S.BACKOFF)
    starting = Process(name="w5", state=S.STARTING)
    order = retire_first([*running[:2], backoff, running[2], starting])
    assert [p.name for p in order] == ["w5", "w4", "w3", "w2", "w1"]
