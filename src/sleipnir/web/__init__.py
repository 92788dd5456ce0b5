"""The HTTP side: a JSON API that answers 202 Accepted, ``/metrics``, ``/healthz`` and a dashboard.

Install with ``pip install 'sleipnir[web]'`` and run ``sleipnir web module:app``.
This package imports the core; the core never imports it.
"""

from __future__ import annotations

from .server import create_app, serve
from .state import check_bind

__all__ = ["check_bind", "create_app", "serve"]
