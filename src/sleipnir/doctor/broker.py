"""The broker's checks, as its backend gives them (:meth:`Broker.diagnose`).

The doctor knows no backend: it hands the backend of the URL's scheme a way to open
the broker and what the deployment around it is (where the results are, the
timings), and reports what comes back. A backend may check without opening the
broker at all (SQLite reads its file and never creates it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..brokers import find_backend
from ..brokers.amqp_checks import RABBITMQ_CONSUMER_TIMEOUT_S
from ..brokers.base import redact_url
from ..checks import Check, Deployment, unreachable
from ..errors import SleipnirError
from .timings import TimingFacts, longest_task

if TYPE_CHECKING:
    from ..app import App

__all__ = ["check_broker"]


def check_broker(
    app: App,
    timings: TimingFacts | None = None,
    consumer_timeout_s: float = RABBITMQ_CONSUMER_TIMEOUT_S,
) -> list[Check]:
    """The broker's checks, by its backend; a broker that cannot be reached fails."""
    url = app.broker_url
    about = Deployment(
        results_url=app.results_url,
        renew_every_s=timings.renew_every_s if timings is not None else 10.0,
        longest_task_s=longest_task(timings),
        consumer_timeout_s=consumer_timeout_s,
    )
    backend = find_backend(url)
    if backend is not None:
        return backend.diagnose(lambda: app.broker, url, about)
    # A broker of no known scheme (an instance given to the App), or none at all.
    try:
        return app.broker.diagnose(about)
    except (SleipnirError, OSError) as exc:
        return [unreachable(redact_url(url), exc)]
