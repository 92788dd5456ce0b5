"""OpenTelemetry traces across the queue: a span per enqueue, a span per run, one trace.

With ``opentelemetry-api`` installed (``pip install 'sleipnir[otel]'``) and an SDK
configured by the application (a ``TracerProvider`` with an exporter), Sleipnir:

* wraps each enqueue in a ``send <task>`` span (kind PRODUCER; one span for a
  ``map`` batch) and writes its context into each job's headers as W3C
  ``traceparent`` (and ``tracestate``/``baggage`` if set), so the trace of the
  web request that enqueued a job goes on in the worker;
* wraps each run in a ``process <task>`` span (kind CONSUMER), a child of the
  enqueue's span, with the job id, queue, task and attempt as attributes; a
  failure is recorded on it as an exception with status ERROR.

Attribute names follow OpenTelemetry's messaging conventions (``messaging.system``
is ``sleipnir``). Without the API, or without an SDK (the API's default
provider records nothing), every hook here returns at once and no header is
added: tracing costs an ``isinstance`` check per call.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["active", "from_http", "inject", "process_span", "send_span"]

TRACER_NAME = "sleipnir"
_PROPAGATED = ("traceparent", "tracestate", "baggage")

_override: Any = None
"""A tracer provider used instead of the global one (tests set it)."""

_NO_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
_MISSING = object()


def _provider() -> Any:
    if _override is not None:
        return _override
    # No SDK can have been set up without importing the API: then tracing is off, and
    # Sleipnir never imports it (the import would add to every worker's start-up).
    trace: Any = sys.modules.get("opentelemetry.trace")
    if trace is None:
        if _NO_ENV_PROVIDER:
            return None
        try:
            from opentelemetry import trace
        except ImportError:
            return None
    # The API's get_tracer_provider() reads os.environ on every call (a microsecond, on
    # every delay); its global says the same at once while no provider was set.
    provider = getattr(trace, "_TRACER_PROVIDER", _MISSING)
    if provider is None and _NO_ENV_PROVIDER:
        return None
    if provider is None or provider is _MISSING:
        provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None  # no SDK configured: spans would record nothing
    return provider


def active() -> bool:
    """Whether spans are recorded (the API is installed and an SDK configured)."""
    return _provider() is not None


@contextlib.contextmanager
def send_span(task: str, queue: str, count: int) -> Iterator[dict[str, str] | None]:
    """Around an enqueue of ``count`` jobs: yields the headers that carry the span's
    context (``None`` when tracing is off)."""
    provider = _provider()
    if provider is None:
        yield None
        return
    from opentelemetry import propagate, trace

    tracer = provider.get_tracer(TRACER_NAME)
    attributes: dict[str, Any] = {
        "messaging.system": "sleipnir",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue,
        "sleipnir.task": task,
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    with tracer.start_as_current_span(
        f"send {task}", kind=trace.SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier


def inject(jobs: Sequence[Any], carrier: Mapping[str, str] | None) -> list[Any]:
    """``jobs`` with the trace headers added (the same jobs when there are none).

    A job that carries a trace context of its own already (one an HTTP caller sent)
    keeps it.
    """
    if not carrier:
        return list(jobs)
    import msgspec

    return [
        j
        if "traceparent" in j.headers
        else msgspec.structs.replace(j, headers={**j.headers, **carrier})
        for j in jobs
    ]


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_MAX_CONTEXT_HEADER = 512


def from_http(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace context an HTTP caller sent (``traceparent``, ``tracestate``,
    ``baggage``), for the job's headers; empty when there is no valid ``traceparent``.

    Needs no OpenTelemetry here: the context is passed on as the caller sent it, so
    the run's span (in a worker with an SDK) joins the caller's trace, whatever
    language the caller is written in.
    """
    parent = headers.get("traceparent", "").strip().lower()
    if not _TRACEPARENT.fullmatch(parent) or parent.startswith("ff"):
        return {}
    out = {"traceparent": parent}
    for name in ("tracestate", "baggage"):
        value = headers.get(name, "").strip()
        if value and len(value) <= _MAX_CONTEXT_HEADER and value.isprintable():
            out[name] = value
    return out


@contextlib.contextmanager
def process_span(
    task: str, queue: str, job_id: str, attempt: int, headers: Mapping[str, str]
) -> Iterator[None]:
    """Around one run: a CONSUMER span, the child of the span that enqueued the job."""
    provider = _provider()
    if provider is None:
        yield
        return
    from opentelemetry import propagate, trace

    tracer = provider.get_tracer(TRACER_NAME)
    carrier = {k: headers[k] for k in _PROPAGATED if k in headers}
    parent = propagate.extract(carrier) if carrier else None
    with tracer.start_as_current_span(
        f"process {task}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "sleipnir",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": job_id,
            "sleipnir.task": task,
            "sleipnir.attempt": attempt,
        },
        record_exception=True,
        set_status_on_exception=True,
    ):
        yield
