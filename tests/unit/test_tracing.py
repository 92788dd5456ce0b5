"""OpenTelemetry: the enqueue's span and the run's span are one trace across the queue."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sleipnir import App, tracing
from sleipnir.job import decode_job

from .conftest import drain


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK provider for Sleipnir's spans only (the process's global one is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_override", provider)
    yield exporter
    provider.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_without_an_sdk_nothing_is_added_to_the_job(app: App) -> None:
    @app.task
    def work() -> None: ...

    assert not tracing.active()
    handle = work.delay()
    reserved = app.broker.reserve(["default"], 1, 30.0)
    assert [r.id for r in reserved] == [handle.id]
    assert decode_job(reserved[0].body).headers == {}


def test_the_run_continues_the_trace_of_the_request_that_enqueued_it(
    app: App, spans: InMemorySpanExporter
) -> None:
    @app.task(queue="mail")
    def send_welcome(user: int) -> int:
        return user

    provider = tracing._override
    with provider.get_tracer("web").start_as_current_span("POST /signup") as request:
        handle = send_welcome.delay(7)
    drain(app)
    assert handle.result(timeout=1.0) == 7
    found = by_name(spans)
    send, process = found["send send_welcome"], found["process send_welcome"]
    trace_id = request.get_span_context().trace_id
    assert {send.context.trace_id, process.context.trace_id} == {trace_id}
    assert send.parent.span_id == request.get_span_context().span_id
    assert process.parent.span_id == send.context.span_id
    assert (send.kind, process.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert process.attributes["messaging.system"] == "sleipnir"
    assert process.attributes["messaging.destination.name"] == "mail"
    assert process.attributes["messaging.message.id"] == handle.id
    assert process.attributes["sleipnir.attempt"] == 1


def test_a_failure_is_recorded_on_the_runs_span(app: App, spans: InMemorySpanExporter) -> None:
    @app.task(retries=0)
    def broken() -> None:
        raise ValueError("no such user")

    @app.task
    async def fine() -> str:
        await asyncio.sleep(0)
        return "ok"

    broken.delay()
    fine.delay()
    drain(app)
    found = by_name(spans)
    failed = found["process broken"]
    assert failed.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in failed.events)
    assert found["process fine"].status.status_code is not StatusCode.ERROR


def test_a_batch_is_one_send_span_and_each_run_its_child(
    app: App, spans: InMemorySpanExporter
) -> None:
    @app.task
    def square(n: int) -> int:
        return n * n

    square.map([(i,) for i in range(3)])
    drain(app)
    finished = spans.get_finished_spans()
    sends = [s for s in finished if s.name == "send square"]
    runs = [s for s in finished if s.name == "process square"]
    assert len(sends) == 1 and len(runs) == 3
    assert sends[0].attributes["messaging.batch.message_count"] == 3
    assert {r.parent.span_id for r in runs} == {sends[0].context.span_id}


def test_the_global_provider_is_used_once_an_sdk_sets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not tracing.active()
    monkeypatch.setattr(
        trace, "_TRACER_PROVIDER", TracerProvider()
    )  # what set_tracer_provider does
    assert tracing.active()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", trace.NoOpTracerProvider())
    assert not tracing.active()


def test_a_trace_context_sent_over_http_is_the_runs_parent(
    app: App, spans: InMemorySpanExporter
) -> None:
    import msgspec

    @app.task
    def work() -> None: ...

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = tracing.from_http({"traceparent": parent.upper(), "baggage": "tenant=7"})
    assert context == {"traceparent": parent, "baggage": "tenant=7"}
    job = work.build()
    job = msgspec.structs.replace(job, headers={**job.headers, **context})
    app.enqueue_jobs([job])  # its own context is kept, not replaced by the send span's
    drain(app)
    run = by_name(spans)["process work"]
    assert run.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert run.parent.span_id == 0xB7AD6B7169203331


@pytest.mark.parametrize(
    "value",
    ["", "garbage", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
     "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
)  # fmt: skip
def test_a_malformed_traceparent_is_ignored(value: str) -> None:
    assert tracing.from_http({"traceparent": value, "baggage": "x=1"}) == {}


def test_a_chain_stays_in_one_trace(app: App, spans: InMemorySpanExporter) -> None:
    from sleipnir import chain

    @app.task
    def inc(n: int) -> int:
        return n + 1

    with tracing._override.get_tracer("web").start_as_current_span("POST /orders") as request:
        handle = chain(inc.s(1), inc.s(), inc.s()).delay()
    for _ in range(3):
        drain(app)
    assert handle.result(timeout=1.0) == 4
    runs = [s for s in spans.get_finished_spans() if s.name == "process inc"]
    assert len(runs) == 3
    assert {r.context.trace_id for r in runs} == {request.get_span_context().trace_id}
