"""Commands for operators: ``doctor``, ``web`` (API and dashboard), ``top``."""

from __future__ import annotations

import logging
import sys

import click

from ..app import App
from ..errors import SleipnirError
from .base import APP, _AppType, main


@main.command()
@click.argument("app", type=_AppType(), required=False)
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    help="The supervisor's stop timeout: systemd TimeoutStopSec=, supervisord stopwaitsecs=.",
)
@click.option(
    "--worker-stop-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="The workers' --stop-timeout.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0, min_open=True),
    help="The workers' --lease (default: the App's).",
)
@click.option(
    "--steal-seconds",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="Seconds to sample CPU steal over; 0 skips it.",
)
@click.option(
    "--consumer-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=1800.0,
    show_default=True,
    help="RabbitMQ's consumer_timeout in seconds (rabbitmq.conf has it in ms).",
)
def doctor(
    app: App | None,
    as_json: bool,
    stop_timeout: float | None,
    worker_stop_timeout: float,
    lease: float | None,
    steal_seconds: float,
    consumer_timeout: float,
) -> None:
    """Check this host, the broker and the timings: pass, warn or fail, each with its fix.

    Without APP the App comes from the SLEIPNIR_* environment variables. Exits 1
    when any check fails.
    """
    from .. import doctor as checkup
    from ..brokers.base import redact_url

    # The report is the output; client libraries' connection chatter is not.
    logging.getLogger("pika").setLevel(logging.WARNING)
    given = app is not None
    if app is None:
        try:
            app = App.from_env()
        except SleipnirError as exc:
            raise click.ClickException(str(exc)) from exc
    checks = checkup.run_doctor(
        app,
        app_given=given,
        lease_s=lease,
        worker_stop_timeout_s=worker_stop_timeout,
        supervisor_stop_timeout_s=stop_timeout,
        steal_seconds=steal_seconds,
        consumer_timeout_s=consumer_timeout,
    )
    app.close()
    broker = redact_url(app.broker_url)
    if as_json:
        click.echo(checkup.render_json(checks, broker=broker))
    else:
        click.echo(checkup.render_text(checks, header=f"sleipnir doctor: {broker}"))
    sys.exit(1 if checkup.failed(checks) else 0)


@main.command()
@APP
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--idempotency-window",
    type=click.FloatRange(min=0, min_open=True),
    default=24 * 3600.0,
    show_default=True,
    help="Seconds an Idempotency-Key keeps naming its job.",
)
@click.option(
    "--session-lifetime",
    type=click.FloatRange(min=0, min_open=True),
    default=12 * 3600.0,
    show_default=True,
    help="Seconds a dashboard login lasts before the login form is shown again.",
)
@click.option("--access-log/--no-access-log", default=True, help="Log every request.")
def web(
    app: App,
    host: str,
    port: int,
    idempotency_window: float,
    session_lifetime: float,
    access_log: bool,
) -> None:
    """Serve the HTTP API, /metrics, /healthz and the dashboard (needs sleipnir[web]).

    Every route but /healthz needs "Authorization: Bearer $SLEIPNIR_API_TOKEN";
    without that variable, or with a token shorter than 16 characters, only a
    loopback address is accepted.
    """
    try:
        from ..web import serve
    except ImportError as exc:
        raise click.ClickException(f"{exc}: pip install 'sleipnir[web]'") from exc
    try:
        serve(
            app,
            host=host,
            port=port,
            idempotency_window=idempotency_window,
            session_lifetime=session_lifetime,
            access_log=access_log,
        )
    except SleipnirError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@APP
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between redraws.",
)
@click.option("--once", is_flag=True, help="Print the view once and exit.")
def top(app: App, interval: float, once: bool) -> None:
    """A live view of queues, throughput, wait and run times, workers and host CPU steal."""
    try:
        import rich  # noqa: F401 - checked here to name the extra

        from ..top import run_top
    except ImportError as exc:
        raise click.ClickException(f"{exc}: pip install 'sleipnir[web]'") from exc
    run_top(app, interval=interval, once=once)
