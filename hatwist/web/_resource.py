# -*- test-case-name: tests.web.test_resource -*-
"""
The twisted.web faces on ``status_listen``: ``/`` (HTML), ``/status`` (JSON), ``/metrics``.

Each request reads the sources afresh and renders synchronously: all of it is in-memory
bookkeeping, so nothing here can block the reactor on I/O. Responses are never cached,
and the page may load nothing from anywhere (Content-Security-Policy).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from ._limits import LimitedSite
from ._metrics import metrics_registry, render_metrics
from ._page import render_page
from ._status import StatusSources, status_document

_JSON = b"application/json; charset=utf-8"
_HTML = b"text/html; charset=utf-8"
#: The page uses one inline style sheet and nothing else: no scripts, frames or fetches.
_PAGE_POLICY = b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'"


def _common_headers(request: Request, content_type: bytes) -> None:
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")


class _Node(Resource):
    """A resource whose only children are the ones put there: anything else is 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class StatusResource(_Node):
    """``GET /status``: the status document as JSON."""

    def __init__(self, sources: StatusSources) -> None:
        super().__init__()
        self._sources = sources

    def render_GET(self, request: Request) -> bytes:
        _common_headers(request, _JSON)
        return json.dumps(status_document(self._sources), indent=2).encode() + b"\n"


class MetricsResource(_Node):
    """``GET /metrics``: Prometheus text (or OpenMetrics when the scraper asks)."""

    def __init__(self, sources: StatusSources) -> None:
        super().__init__()
        self._registry = metrics_registry(sources)

    def render_GET(self, request: Request) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        body, content_type = render_metrics(self._registry, accept)
        _common_headers(request, content_type.encode())
        return body


class PageResource(_Node):
    """``GET /``: the self-refreshing HTML page."""

    def __init__(self, sources: StatusSources) -> None:
        super().__init__()
        self._sources = sources

    def render_GET(self, request: Request) -> bytes:
        _common_headers(request, _HTML)
        request.setHeader(b"Content-Security-Policy", _PAGE_POLICY)
        return render_page(status_document(self._sources)).encode()


def make_status_root(sources: StatusSources) -> Resource:
    """The resource tree: ``/``, ``/status`` and ``/metrics``; anything else is 404."""
    root = _Node()
    root.putChild(b"", PageResource(sources))
    root.putChild(b"status", StatusResource(sources))
    root.putChild(b"metrics", MetricsResource(sources))
    return root


class _StatusSite(LimitedSite):
    """
    A ``Site`` without an access log, within the status port's bounds (:mod:`._limits`).

    twisted.web writes one line per request to the process log unless told otherwise;
    with Prometheus scraping and the page reloading itself every few seconds, those
    lines would drown the relay's own events (deliveries, proxy state changes).
    """

    def log(self, request: Request) -> None:
        pass


def make_status_site(
    sources: StatusSources,
    *,
    max_connections: int = 64,
    idle_timeout: float = 15,
    reactor: Any = None,
) -> Site:
    """The ``Site`` to listen with on ``status_listen`` (no access log, no tracebacks),
    with at most ``max_connections`` connections and ``idle_timeout`` per request."""
    site = _StatusSite(
        make_status_root(sources),
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        reactor=reactor,
    )
    site.displayTracebacks = False
    site.noisy = False
    return site
