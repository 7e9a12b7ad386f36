"""Shared parts for the web tests: a scheduler stand-in, a served status site, HTTP GET.

The registry in these tests is always the real ``hatwist.health.ServerRegistry``; only
the scheduler is a stand-in (its two read-only methods are all the status faces use).
"""

from __future__ import annotations

from html.parser import HTMLParser

import attrs
from twisted.internet import defer, protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

from hatwist.config import ServerAddress
from hatwist.health import ServerRegistry
from hatwist.scheduler import QueueState
from hatwist.web import DeliveryMetrics, StatusSources, make_status_site

#: Deadline for any one HTTP exchange or subprocess in these tests.
DEADLINE = 30.0

V4 = ServerAddress("127.0.0.1", 5000)
#: Spelled the way an operator might: the status faces must show this text, not "[::1]".
V6 = ServerAddress("::1", 5001, "[0::1]:5001")
NAMED = ServerAddress("proxy.example.test", 5002)


@attrs.define
class FakeScheduler:
    """``queue_states`` and ``counters`` from plain dicts the test edits: a queue in
    ``depths`` is active unless ``states`` gives its :class:`QueueState`."""

    depths: dict[tuple[str, str], int] = attrs.Factory(dict)
    totals: dict[str, int] = attrs.Factory(dict)
    states: dict[tuple[str, str], QueueState] = attrs.Factory(dict)

    def queue_states(self) -> list[QueueState]:
        return [
            self.states.get((b, d)) or QueueState(b, d, n, 0, "active", None)
            for (b, d), n in self.depths.items()
        ]

    def counters(self) -> dict[str, int]:
        return dict(self.totals)


def registry(*servers: ServerAddress, threshold: int = 1) -> ServerRegistry:
    return ServerRegistry(
        servers or (V4, V6, NAMED), success_threshold=threshold, failure_threshold=threshold
    )


def unplumb(reg: ServerRegistry, server: ServerAddress, at: float, error: str) -> None:
    while reg.is_plumbed(server):
        reg.record_failure(server, at=at, error=error)


def attempt_event(binding="b1", route="direct", codes=None, **extra) -> dict:
    """A delivery-attempt log event shaped like hatwist.delivery.attempt's."""
    return {
        "hatwist_event": "delivery_attempt",
        "log_namespace": "hatwist.delivery.attempt",
        "binding": binding,
        "route": route,
        "codes": {"a@example.test": 250} if codes is None else codes,
        "error": None,
        **extra,
    }


def sources(reg=None, scheduler=None, clock=None, deliveries=None) -> StatusSources:
    from twisted.internet import task

    if clock is None:
        clock = task.Clock()
        clock.advance(1_800_000_000)
    return StatusSources(
        reg,
        scheduler,
        "9.9.9-test",
        clock,
        deliveries=deliveries if deliveries is not None else DeliveryMetrics(),
    )


class Served:
    """A status site listening on 127.0.0.1, any free port."""

    def __init__(self, reactor, status_sources: StatusSources) -> None:
        self.reactor = reactor
        self.port = reactor.listenTCP(0, make_status_site(status_sources), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    def close(self) -> defer.Deferred:
        return defer.maybeDeferred(self.port.stopListening)


async def get(reactor, url: str, accept: str | None = None) -> tuple[int, Headers, bytes]:
    """GET ``url`` over a fresh connection (closed after), with a deadline."""
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    headers = Headers({b"Accept": [accept.encode()]}) if accept else None
    d = agent.request(b"GET", url.encode(), headers)
    d.addTimeout(DEADLINE, reactor)
    response = await d
    body = _Body()
    response.deliverBody(body)
    body.done.addTimeout(DEADLINE, reactor)
    return response.code, response.headers, await body.done


class _Body(protocol.Protocol):
    """Collects a response body (``readBody`` warns about this transport in Twisted 26)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


class _ProxyRows(HTMLParser):
    """Reads the proxy table: for each row, its data-* attributes and the state cell."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._row: dict[str, str] | None = None
        self._in_state = False
        self._in_proxies = False

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if tag == "table":
            self._in_proxies = attributes.get("id") == "proxies"
        elif tag == "tr" and self._in_proxies and "data-server" in attributes:
            self._row = {"data-state": attributes["data-state"], "text": ""}
            self.rows[attributes["data-server"]] = self._row
        elif tag == "td" and self._row is not None and "state" in attributes.get("class", ""):
            self._row["class"] = attributes["class"]
            self._in_state = True

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_state = False
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._in_proxies = False

    def handle_data(self, data):
        if self._in_state and self._row is not None:
            self._row["text"] += data


def proxy_rows(html: str) -> dict[str, dict[str, str]]:
    """``{server: {"data-state", "class", "text"}}`` for each row of the page's proxy table."""
    parser = _ProxyRows()
    parser.feed(html)
    parser.close()
    return parser.rows
