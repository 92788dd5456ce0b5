"""The App: registering tasks, finding them, configuration, the public names."""

from __future__ import annotations

from pathlib import Path

import pytest

import sleipnir
from sleipnir import App, ConfigurationError, Task, UnknownTaskError
from sleipnir.testing import FakeClock

PUBLIC_NAMES = {
    "App", "Broker", "BrokerConnectionError", "BrokerError", "Clock", "ConfigurationError",
    "DecodeError", "EncodeError", "Fail", "InvalidArgumentsError", "Job", "JobFailedError",
    "JobHandle", "JobNotFoundError", "JobState", "KeyReusedError", "PayloadTooLargeError",
    "ResultStore", "ResultTimeoutError", "Retry", "SleipnirError", "SystemClock", "Task",
    "TaskControl", "UnknownTaskError", "Worker", "__version__",
    "Cancelled", "Context", "JobCancelledError", "chain", "group",
    "Hook", "JobRun", "Outcome",
}  # fmt: skip


def test_public_names_are_exactly_these_and_all_importable() -> None:
    assert set(sleipnir.__all__) == PUBLIC_NAMES
    assert len(sleipnir.__all__) == len(PUBLIC_NAMES)  # no name listed twice
    namespace: dict[str, object] = {}
    exec(f"from sleipnir import {', '.join(sorted(PUBLIC_NAMES))}", namespace)
    for name in PUBLIC_NAMES:
        assert namespace[name] is getattr(sleipnir, name)


def test_errors_form_one_tree_and_task_control_stays_outside_it() -> None:
    errors = PUBLIC_NAMES - {"SleipnirError", "Retry", "Fail", "Cancelled", "TaskControl"}
    errors = {n for n in errors if n.endswith("Error")}
    assert errors  # the filter kept something
    for name in errors:
        assert issubclass(getattr(sleipnir, name), sleipnir.SleipnirError), name
    for name in ("Retry", "Fail", "Cancelled"):
        control = getattr(sleipnir, name)
        assert issubclass(control, sleipnir.TaskControl)
        assert not issubclass(control, sleipnir.SleipnirError)


def test_bare_decorator_registers_under_the_function_name(app: App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert isinstance(add, Task)
    assert app.get_task("add") is add
    assert add.name == "add"
    assert add.options.queue == "default"
    assert add(2, 3) == 5  # calling the task runs the function here and now
    assert app.broker.stats() == []  # ... and enqueues nothing


def test_decorator_with_options_registers_under_the_function_name(app: App) -> None:
    @app.task(queue="images", retries=5, backoff=2.0, max_backoff=9.0, timeout=60.0, priority=3)
    def resize(path: str, width: int) -> str:
        return f"{path}@{width}"

    assert app.get_task("resize") is resize
    options = resize.options
    assert (options.queue, options.retries, options.backoff) == ("images", 5, 2.0)
    assert (options.max_backoff, options.timeout, options.priority) == (9.0, 60.0, 3)
    assert resize("a.jpg", 200) == "a.jpg@200"


def test_name_option_overrides_the_function_name(app: App) -> None:
    @app.task(name="mail.send")
    def send() -> str:
        return "sent"

    assert app.get_task("mail.send") is send
    assert "send" not in app.tasks


def test_tasks_without_a_queue_use_the_apps_default_queue(clock: FakeClock) -> None:
    app = App(broker="memory://", clock=clock, default_queue="jobs")

    @app.task
    def work() -> None: ...

    assert work.options.queue == "jobs"


def test_a_second_task_under_a_taken_name_is_refused(app: App) -> None:
    @app.task
    def send() -> None: ...

    with pytest.raises(ConfigurationError, match="'send' is already registered"):

        @app.task(name="send")
        def other() -> None: ...

    assert app.get_task("send") is send  # the first one stays


def test_unknown_task_names_the_registered_ones(app: App) -> None:
    @app.task
    def beta() -> None: ...

    @app.task
    def alpha() -> None: ...

    with pytest.raises(UnknownTaskError, match=r"unknown task 'nope' \(registered: alpha, beta\)"):
        app.get_task("nope")


def test_unknown_task_on_an_empty_app_says_none_are_registered(app: App) -> None:
    with pytest.raises(UnknownTaskError, match="registered: none"):
        app.get_task("nope")


@pytest.mark.parametrize(
    "options", [{"retries": -1}, {"backoff": -1.0}, {"max_backoff": -1.0}, {"timeout": 0.0}]
)
def test_bad_task_options_are_refused_at_registration(app: App, options: dict[str, float]) -> None:
    with pytest.raises(ValueError):

        @app.task(**options)  # type: ignore[call-overload]
        def work() -> None: ...

    assert app.tasks == {}


@pytest.mark.parametrize("option", ["lease", "max_payload_bytes", "result_ttl"])
def test_app_settings_must_be_above_zero(option: str) -> None:
    with pytest.raises(ConfigurationError, match=option):
        App(broker="memory://", **{option: 0})


def test_from_env_reads_the_sleipnir_variables() -> None:
    app = App.from_env(
        {
            "SLEIPNIR_BROKER": "memory://",
            "SLEIPNIR_RESULTS": "memory://results",
            "SLEIPNIR_QUEUE": "mail",
            "SLEIPNIR_LEASE": "12.5",
            "SLEIPNIR_MAX_PAYLOAD_BYTES": "2048",
            "SLEIPNIR_RESULT_TTL": "60",
        }
    )
    assert (app.broker_url, app.results_url, app.default_queue) == (
        "memory://", "memory://results", "mail"
    )  # fmt: skip
    assert (app.lease, app.max_payload_bytes, app.result_ttl) == (12.5, 2048, 60.0)


def test_from_env_keywords_win_and_empty_variables_keep_the_default() -> None:
    env = {"SLEIPNIR_BROKER": "memory://", "SLEIPNIR_LEASE": "12.5", "SLEIPNIR_QUEUE": ""}
    app = App.from_env(env, lease=60.0)
    assert app.lease == 60.0
    assert app.default_queue == "default"


def test_from_env_does_not_read_os_environ_when_given_a_mapping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLEIPNIR_LEASE", "99")
    assert App.from_env({"SLEIPNIR_BROKER": "memory://"}).lease == 30.0
    assert App.from_env({"SLEIPNIR_BROKER": "memory://"}) is not None
    monkeypatch.setenv("SLEIPNIR_BROKER", "memory://")
    assert App.from_env().lease == 99.0  # without a mapping: os.environ


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SLEIPNIR_LEASE", "soon"),
        ("SLEIPNIR_LEASE", "1,5"),
        ("SLEIPNIR_MAX_PAYLOAD_BYTES", "1.5"),
        ("SLEIPNIR_MAX_PAYLOAD_BYTES", "1MB"),
        ("SLEIPNIR_RESULT_TTL", "a week"),
    ],
)
def test_from_env_refuses_a_value_that_is_not_a_number(var: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=var):
        App.from_env({"SLEIPNIR_BROKER": "memory://", var: value})


@pytest.mark.parametrize("var", ["SLEIPNIR_LEASE", "SLEIPNIR_RESULT_TTL"])
def test_from_env_refuses_nan_seconds(var: str) -> None:
    # float("nan") parses, but a NaN lease makes every reserved job invisible for ever
    # (no comparison with NaN is true), and a NaN TTL makes every result vanish.
    with pytest.raises(ConfigurationError):
        App.from_env({"SLEIPNIR_BROKER": "memory://", var: "nan"})


def test_unknown_broker_scheme_is_a_configuration_error() -> None:
    app = App(broker="kafka://somewhere")  # building connects to nothing ...
    with pytest.raises(ConfigurationError, match="no broker for URL scheme 'kafka'"):
        _ = app.broker  # ... the first use does


def test_default_app_is_sleipnir_db_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = App()
    assert app.broker_url.startswith("sqlite:///")
    assert app.broker_url.endswith("sleipnir.db")
    assert app.broker_url == f"sqlite://{tmp_path / 'sleipnir.db'}"
    assert app.results_url == app.broker_url


def test_default_app_creates_nothing_on_disk_until_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = App()

    @app.task
    def work() -> None: ...

    repr(app)
    assert list(tmp_path.iterdir()) == []
    work.delay()
    try:
        assert (tmp_path / "sleipnir.db").exists()
    finally:
        app.close()


def test_relative_sqlite_url_is_pinned_to_the_directory_of_the_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = App(broker="sqlite:data/jobs.db?sync=full")
    monkeypatch.chdir("/")
    assert app.broker_url == f"sqlite://{tmp_path / 'data' / 'jobs.db'}?sync=full"
