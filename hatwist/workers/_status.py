# -*- test-case-name: tests.workers.test_relay_workers -*-
"""
The supervisor's ``status_listen``: /status, /metrics and the page for the whole relay.

Each request asks every worker, over its private UNIX socket, for its /status and
/metrics at once (each with a short deadline, so a wedged worker costs one scrape at
most :data:`ASK_TIMEOUT` seconds and shows as not answering), and merges the answers
(``hatwist.web._aggregate``). Nothing is cached: the answer is what the workers say now.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from hatwist.web import render_page
from hatwist.web._aggregate import WorkerView, merge_metrics, merge_status
from hatwist.web._limits import LimitedSite

__all__ = ["ASK_TIMEOUT", "make_supervisor_site"]

#: Seconds a worker has to answer one status request.
ASK_TIMEOUT = 3.0
_PAGE_POLICY = b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'"


class _QuietHTTPFactory(_HTTP11ClientFactory):
    """No "Starting factory" log lines for every scrape of every worker."""

    noisy = False


@implementer(IAgentEndpointFactory)
class _WorkerSockets:
    """Maps ``http://worker-N/...`` to worker N's UNIX status socket."""

    def __init__(self, reactor: Any, socket_for: Callable[[int], str]) -> None:
        self._reactor = reactor
        self._socket_for = socket_for

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        worker = int(uri.host.decode("ascii").removeprefix("worker-"))
        return UNIXClientEndpoint(self._reactor, self._socket_for(worker), timeout=ASK_TIMEOUT)


class WorkerStatus:
    """Asks the workers; ``slots`` are the supervisor's :class:`WorkerSlot` objects."""

    def __init__(self, reactor: Any, slots: Sequence[Any], socket_for: Callable[[int], str],
                 version: str, workers: int) -> None:
        self._reactor = reactor
        self._slots = slots
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 2  # /status and /metrics of one page view at once
        pool._factory = _QuietHTTPFactory
        self._agent = Agent.usingEndpointFactory(
            reactor, _WorkerSockets(reactor, socket_for), pool=pool)
        self.version = version
        self.workers = workers

    async def _get(self, worker: int, path: str) -> bytes:
        d = self._agent.request(b"GET", f"http://worker-{worker}{path}".encode())
        d.addTimeout(ASK_TIMEOUT, self._reactor)
        response = await d
        body = await readBody(response).addTimeout(ASK_TIMEOUT, self._reactor)
        if response.code != 200:
            raise ValueError(f"HTTP {response.code}")
        return body

    async def _ask(self, slot: Any) -> WorkerView:
        view = {"worker": slot.worker, "pid": slot.pid, "state": slot.state,
                "restarts": slot.restarts}
        if slot.pid is None:
            return WorkerView(**view, error="not running")
        try:
            status, metrics = await defer.gatherResults([
                defer.Deferred.fromCoroutine(self._get(slot.worker, "/status")),
                defer.Deferred.fromCoroutine(self._get(slot.worker, "/metrics")),
            ], consumeErrors=True)
            return WorkerView(**view, status=json.loads(status), metrics=metrics.decode())
        except Exception as e:  # a worker not answering is shown, not raised
            cause = getattr(e, "subFailure", None)
            reason = cause.value if cause is not None else e
            return WorkerView(**view, error=f"{type(reason).__name__}: {reason}")

    async def views(self) -> list[WorkerView]:
        return list(await defer.gatherResults(
            [defer.Deferred.fromCoroutine(self._ask(slot)) for slot in self._slots]))

    def own_metrics(self, views: Iterable[WorkerView]) -> list[Metric]:
        """The supervisor's families: how many workers, which answer, their restarts."""
        count = GaugeMetricFamily("hatwist_workers", "Worker processes configured.")
        count.add_metric([], self.workers)
        up = GaugeMetricFamily("hatwist_worker_up",
                               "1 when the worker runs and answered this scrape.",
                               labels=["worker"])
        restarts = CounterMetricFamily("hatwist_worker_restarts",
                                       "Times the worker was restarted after it died.",
                                       labels=["worker"])
        for view in views:
            up.add_metric([str(view.worker)], int(view.status is not None))
            restarts.add_metric([str(view.worker)], view.restarts)
        return [count, up, restarts]


class _Merged(Resource):
    isLeaf = True

    def __init__(
        self, status: WorkerStatus, render: Callable[[list[WorkerView]], tuple[bytes, bytes]]
    ) -> None:
        super().__init__()
        self._status = status
        self._render = render

    def render_GET(self, request: Request) -> Any:
        async def answer() -> None:
            views = await self._status.views()
            body, content_type = self._render(views)
            request.setHeader(b"Content-Type", content_type)
            request.setHeader(b"Cache-Control", b"no-store")
            request.setHeader(b"X-Content-Type-Options", b"nosniff")
            if content_type.startswith(b"text/html"):
                request.setHeader(b"Content-Security-Policy", _PAGE_POLICY)
            if not request._disconnected:
                request.write(body)
                request.finish()

        d = defer.Deferred.fromCoroutine(answer())
        d.addErrback(lambda f: (request.setResponseCode(500), request.finish())
                     if not request._disconnected else None)
        return NOT_DONE_YET


class _Node(Resource):
    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class _QuietSite(LimitedSite):
    """The status port's bounds (``status_max_connections``, ``status_idle_timeout``) as a
    single relay has them, and no access log."""

    def log(self, request: Request) -> None:
        pass


def make_supervisor_site(status: WorkerStatus, reactor: Any, *, max_connections: int = 64,
                         idle_timeout: float = 15) -> Site:
    """/, /status and /metrics of the whole relay; anything else is 404."""

    def document(views: list[WorkerView]) -> dict[str, Any]:
        return merge_status(views, version=status.version, now=reactor.seconds())

    def as_json(views: list[WorkerView]) -> tuple[bytes, bytes]:
        return (json.dumps(document(views), indent=2).encode() + b"\n",
                b"application/json; charset=utf-8")

    def as_metrics(views: list[WorkerView]) -> tuple[bytes, bytes]:
        return (merge_metrics(views, status.own_metrics(views)),
                b"text/plain; version=0.0.4; charset=utf-8")

    def as_page(views: list[WorkerView]) -> tuple[bytes, bytes]:
        return render_page(document(views)).encode(), b"text/html; charset=utf-8"

    root = _Node()
    root.putChild(b"", _Merged(status, as_page))
    root.putChild(b"status", _Merged(status, as_json))
    root.putChild(b"metrics", _Merged(status, as_metrics))
    site = _QuietSite(root, max_connections=max_connections, idle_timeout=idle_timeout,
                      reactor=reactor)
    site.displayTracebacks = False
    site.noisy = False
    return site
