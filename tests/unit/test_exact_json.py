"""Values JSON cannot carry exactly: lone surrogates, NaN and the infinities.

msgspec writes NaN and the infinities as ``null`` and raises a bare
UnicodeEncodeError on a lone surrogate. Sleipnir refuses all of them with
:class:`EncodeError` naming where they are: at enqueue (nothing is stored), and in
a task's return value (the job fails with that reason).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sleipnir import App, EncodeError, JobFailedError, chain, group
from sleipnir.job import Job, check_call, decode_job, encode_job, encode_value, not_exact_json

from .conftest import CliApp, cli_app, drain, serve_api

NAN = float("nan")
INF = float("inf")

# (args, kwargs, what the message says, where it says it is)
REFUSED: list[tuple[tuple[Any, ...], dict[str, Any], str, str]] = [
    ((), {"s": "a\ud800b"}, r"contains a lone surrogate \ud800 (not valid UTF-8)", "kwargs['s']"),
    (("\udfff",), {}, r"contains a lone surrogate \udfff (not valid UTF-8)", "args[0]"),
    (({"k\udc00": 1},), {}, "has a key 'k\\udc00' that contains a lone surrogate", "args[0]"),
    ((), {"s": {"k\ud800": 1}}, "has a key 'k\\ud800' that contains", "kwargs['s']"),
    (([1, ["x", "y\ud83d"]],), {}, r"contains a lone surrogate \ud83d", "args[0][1][1]"),
    ((NAN,), {}, "is NaN; NaN is not valid JSON", "args[0]"),
    ((INF,), {}, "is inf; infinity is not valid JSON", "args[0]"),
    ((), {"s": -INF}, "is -inf; infinity is not valid JSON", "kwargs['s']"),
    (([1.5, {"a": NAN}],), {}, "is NaN; NaN is not valid JSON", "args[0][1]['a']"),
    ((), {"s": [None, [INF]]}, "is inf; infinity is not valid JSON", "kwargs['s'][1][0]"),
    ((), {"s": (0.0, -INF)}, "is -inf", "kwargs['s'][1]"),
]
IDS = [
    "surrogate-kwarg", "surrogate-arg", "surrogate-key", "surrogate-nested-key",
    "surrogate-nested-list", "nan", "inf", "minus-inf-kwarg", "nan-nested", "inf-nested",
    "minus-inf-in-tuple",
]  # fmt: skip


def register(app: App) -> Any:
    @app.task
    def take(*args: Any, **kwargs: Any) -> None: ...

    return take


def refusal(where: str, what: str) -> str:
    """The message an argument refusal carries, as a regex."""
    return re.escape(f"cannot enqueue take: argument {where} {what}")


@pytest.mark.parametrize(("args", "kwargs", "what", "where"), REFUSED, ids=IDS)
def test_delay_enqueue_and_map_refuse_the_value_saying_where_and_store_nothing(
    app: App, args: tuple[Any, ...], kwargs: dict[str, Any], what: str, where: str
) -> None:
    take = register(app)
    message = refusal(where, what)
    with pytest.raises(EncodeError, match=message):
        take.delay(*args, **kwargs)
    with pytest.raises(EncodeError, match=message):
        take.enqueue(args, kwargs)
    with pytest.raises(EncodeError, match=message):
        take.enqueue(args, kwargs, key="order-1")  # the key's fingerprint encodes first
    with pytest.raises(EncodeError, match=message):
        asyncio.run(take.delay_async(*args, **kwargs))
    if not kwargs:  # map takes positional arguments: one bad call, none of the batch stored
        with pytest.raises(EncodeError, match=message):
            take.map([("fine",), args, ("fine too",)])
    assert app.broker.stats() == []
    assert app.broker.reserve(["default"], 10, 30.0) == []


@pytest.mark.parametrize(("args", "kwargs", "what", "where"), REFUSED, ids=IDS)
def test_a_unique_task_refuses_the_value_too(
    app: App, args: tuple[Any, ...], kwargs: dict[str, Any], what: str, where: str
) -> None:
    @app.task(unique_for=60.0)
    def take(*args: Any, **kwargs: Any) -> None: ...

    with pytest.raises(EncodeError, match=refusal(where, what)):
        take.delay(*args, **kwargs)
    assert app.broker.reserve(["default"], 10, 30.0) == []


def test_later_chain_steps_and_a_group_callback_are_refused_before_anything_is_stored(
    app: App,
) -> None:
    take = register(app)
    with pytest.raises(EncodeError, match=refusal("args[0]", "is NaN")):
        chain(take.s(1), take.s(NAN)).delay()
    with pytest.raises(EncodeError, match=refusal("kwargs['s']", "contains a lone surrogate")):
        group([take.s(1), take.s(2)], callback=take.s(s="\ud800")).delay()
    assert app.broker.reserve(["default"], 10, 30.0) == []


@pytest.mark.parametrize(
    "value",
    [None, "null", [None, "null", {"null": None}], 1.5, -0.0, 1e308, 5e-324, "é ∑ 😀", {1.5: 2}],
)
def test_none_the_word_null_and_finite_floats_go_through_exactly(app: App, value: Any) -> None:
    take = register(app)
    take.delay(value, v=value)
    (reservation,) = app.broker.reserve(["default"], 10, 30.0)
    job = decode_job(reservation.body)
    expected = json.loads(json.dumps([value]))[0]  # a float key comes back as a string
    assert job.args == [expected]
    assert job.kwargs == {"v": expected}


def test_the_check_names_headers_and_other_job_fields() -> None:
    job = Job(id="01", task="t", enqueued_at=0.0, headers={"trace": "a\ud800"})
    with pytest.raises(EncodeError, match=r"header\['trace'\] contains a lone surrogate"):
        encode_job(job)
    with pytest.raises(EncodeError, match=r"job field\[2\] contains a lone surrogate"):
        encode_job(Job(id="01", task="t", queue="q\ud800", enqueued_at=0.0))


def test_not_exact_json_walks_structs_and_dataclasses_as_they_are_encoded() -> None:
    from dataclasses import dataclass

    @dataclass
    class Point:
        x: float
        y: float

    assert (
        not_exact_json({"p": Point(1.0, NAN)}, "value")
        == "value['p']['y'] is NaN; NaN is not valid JSON"
    )
    assert not_exact_json({"p": Point(1.0, 2.0)}, "value") is None
    with pytest.raises(EncodeError, match=r"argument args\[0\]\['y'\] is NaN"):
        check_call("t", [Point(0.0, NAN)], {})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (NAN, "result is NaN; NaN is not valid JSON"),
        ({"ratio": [1.0, INF]}, "result['ratio'][1] is inf; infinity is not valid JSON"),
        ([None, -INF], "result[1] is -inf; infinity is not valid JSON"),
        ("ok\ud800", r"result contains a lone surrogate \ud800 (not valid UTF-8)"),
        (
            {"k\udfff": 1},
            r"result has a key 'k\udfff' that contains a lone surrogate \udfff (not valid UTF-8)",
        ),
    ],
)
def test_encode_value_refuses_what_would_not_come_back(value: Any, message: str) -> None:
    with pytest.raises(EncodeError) as info:
        encode_value(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (NAN, "result is NaN; NaN is not valid JSON"),
        ({"ratio": [1.0, -INF]}, "result['ratio'][1] is -inf; infinity is not valid JSON"),
        ({"s": "\ud800"}, r"result['s'] contains a lone surrogate \ud800 (not valid UTF-8)"),
    ],
)
def test_a_task_returning_such_a_value_fails_once_with_the_reason(
    app: App, value: Any, message: str
) -> None:
    runs: list[int] = []

    @app.task(retries=3)
    def compute() -> Any:
        runs.append(1)
        return value

    handle = compute.delay()
    drain(app)
    assert runs == [1]  # no retry: the same value would be refused again
    assert handle.status() == "failed"
    record = handle.record()
    assert record is not None and record.error == message
    assert app.broker.dead_letters()[0].reason == message
    with pytest.raises(JobFailedError) as info:
        handle.result(timeout=1.0)
    assert info.value.error == message


# -- the HTTP API ------------------------------------------------------------------------


@pytest.fixture
def http(app: App) -> Iterator[httpx.Client]:
    register(app)
    yield from serve_api(app)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (rb'{"task": "take", "kwargs": {"s": "a\ud800b"}}',
         r"argument kwargs['s'] contains a lone surrogate \ud800 (not valid UTF-8)"),
        (rb'{"task": "take", "args": ["\udc00"]}',
         r"argument args[0] contains a lone surrogate \udc00 (not valid UTF-8)"),
        (rb'{"task": "take", "args": [{"k\ud800": 1}]}',
         r"argument args[0] has a key 'k\ud800' that contains a lone surrogate \ud800"),
        (rb'{"task": "take", "args": [[1, ["\udfff"]]]}',
         r"argument args[0][1][0] contains a lone surrogate \udfff"),
        (b'{"task": "take", "args": [NaN]}', "argument args[0] is NaN; NaN is not valid JSON"),
        (b'{"task": "take", "args": [Infinity]}', "argument args[0] is inf; infinity is not"),
        (b'{"task": "take", "kwargs": {"s": -Infinity}}', "argument kwargs['s'] is -inf"),
        (b'{"task": "take", "args": [{"a": [1e400]}]}', "argument args[0]['a'][0] is inf"),
        (b'{"task": "take", "kwargs": {"s": [NaN]}}', "argument kwargs['s'][0] is NaN"),
    ],
)  # fmt: skip
def test_the_http_api_answers_400_with_the_reason_and_stores_nothing(
    app: App, http: httpx.Client, body: bytes, reason: str
) -> None:
    r = http.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.startswith("malformed JSON: ")
    assert reason in error
    assert app.broker.reserve(["default"], 10, 30.0) == []


def test_the_http_api_still_takes_none_and_the_word_null(app: App, http: httpx.Client) -> None:
    r = http.post("/api/jobs", json={"task": "take", "args": [None, "null", 1.5]})
    assert r.status_code == 202, r.text
    (reservation,) = app.broker.reserve(["default"], 10, 30.0)
    assert decode_job(reservation.body).args == [None, "null", 1.5]


# -- the command line ---------------------------------------------------------------------

CLI_MODULE = """
from sleipnir import App

app = App(broker="sqlite:///{db}")


@app.task
def take(*args, **kwargs):
    return None
"""


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliApp]:
    yield from cli_app(CLI_MODULE, tmp_path, monkeypatch)


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--args", "[NaN]", "argument args[0] is NaN; NaN is not valid JSON"),
        ("--args", "[1, [Infinity]]", "argument args[1][0] is inf; infinity is not valid JSON"),
        ("--kwargs", '{"s": -Infinity}', "argument kwargs['s'] is -inf"),
        ("--kwargs", '{"s": "\\ud800"}', r"argument kwargs['s'] contains a lone surrogate \ud800"),
        ("--args", '[{"k\\udfff": 1}]', r"argument args[0] has a key 'k\udfff' that contains"),
    ],
)
def test_cli_enqueue_refuses_with_the_reason_and_stores_nothing(
    cli: CliApp, option: str, value: str, reason: str
) -> None:
    for key in ([], ["--key", "k-1"]):
        result = cli("enqueue", "APP", "take", option, value, *key)
        assert result.exit_code == 1, result.output
        assert reason in result.output
    assert cli.app.broker.stats() == []
