# -*- test-case-name: tests.web -*-
"""
The operator's view of a running hatwist: ``/status`` (JSON), ``/metrics`` (Prometheus)
and ``/`` (an HTML page that refreshes itself), served by twisted.web on ``status_listen``.

The service builds a :class:`StatusSources` from its registry, scheduler and a
:class:`DeliveryMetrics` it adds to the global log publisher, then listens with
:func:`make_status_site`.
"""

from ._deliveries import DELIVERY_EVENT, DeliveryMetrics
from ._history import History
from ._metrics import StatusCollector, metrics_registry, render_metrics
from ._page import REFRESH_SECONDS, render_page
from ._resource import make_status_root, make_status_site
from ._status import StatusSources, status_document

__all__ = [
    "DELIVERY_EVENT",
    "REFRESH_SECONDS",
    "DeliveryMetrics",
    "History",
    "StatusCollector",
    "StatusSources",
    "make_status_root",
    "make_status_site",
    "metrics_registry",
    "render_metrics",
    "render_page",
    "status_document",
]
