# -*- test-case-name: tests.web.test_limits -*-
"""
Bounds on the status port, so that its peers never cost the relay disk, memory or the
descriptors SMTP and the health checks need (issue 11, item 6).

twisted.web as it comes reads any request body before the resource sees the request
(into a temporary file past 100 KB: a chunked POST wrote 3.1 GB in 10 s), keeps any
number of connections open, and restarts a connection's idle timer on every byte, so a
peer trickling a header line keeps its socket forever. Here:

- only ``GET`` and ``HEAD``, and no request body: anything else is answered (405 or
  413, ``Connection: close``) as soon as the headers are in, before one byte of a body
  is read; what the peer still sends is read and dropped for a moment
  (:data:`LINGER_SECONDS`, :data:`LINGER_BYTES`) so it sees the answer rather than a
  reset, then the connection is aborted;
- a request line, a header line and all headers together are bounded
  (:data:`MAX_LINE`, :data:`MAX_HEADER_BYTES`, :data:`MAX_HEADERS`; past them 400);
- a connection must send a whole request within ``idle_timeout`` of opening or of its
  last response; bytes that trickle in do not restart that clock;
- at most ``max_connections`` connections: one more replaces the connection idle the
  longest (not in the middle of a request), so a flood cannot lock the operator out
  for long; when every connection is busy the newcomer gets 503 and is closed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.protocols import basic
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.server import Site

#: The methods the status port answers; everything else gets 405.
ALLOWED_METHODS = (b"GET", b"HEAD")
#: Longest request line or header line; all header lines together; how many headers.
MAX_LINE = 8192
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 64
#: After a refusal, how long and how much the peer's leftovers are read (and dropped) so
#: that it reads the answer instead of a TCP reset; then the connection is aborted.
LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024

def _plain(code: int, reason: str, text: str, extra: bytes = b"") -> bytes:
    body = text.encode() + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n%s\r\n%s"
        % (code, reason.encode(), len(body), extra, body)
    )


_METHOD_NOT_ALLOWED = _plain(
    405, "Method Not Allowed", "only GET and HEAD here", b"Allow: GET, HEAD\r\n"
)
_BODY_REFUSED = _plain(413, "Content Too Large", "request bodies are not accepted here")
_BUSY = _plain(503, "Service Unavailable", "too many status connections", b"Retry-After: 1\r\n")


class LimitedChannel(HTTPChannel):
    """An ``HTTPChannel`` that refuses bodies unread and whose idle timer is a deadline
    for each whole request (see the module docstring)."""

    MAX_LENGTH = MAX_LINE
    totalHeadersSize = MAX_HEADER_BYTES
    maxHeaders = MAX_HEADERS

    def __init__(self) -> None:
        super().__init__()
        self.refused = False
        self.idle_since = 0.0
        self._lingered = 0
        self._linger_call: Any = None

    @property
    def busy(self) -> bool:
        """True while a request is being answered (it may not be evicted then)."""
        return self._handlingRequest and not self.refused

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.channel_opened(self)

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            self._linger(data)
            return
        # Unlike HTTPChannel, no resetTimeout() here: trickling bytes buys no time.
        basic.LineReceiver.dataReceived(self, data)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request or header line over :data:`MAX_LINE` (LineReceiver would just close)."""
        self._respondToBadRequestAndDisconnect()

    def allHeadersReceived(self) -> None:
        if self._command not in ALLOWED_METHODS:
            self._refuse(_METHOD_NOT_ALLOWED, "method")
        elif self.length != 0:  # Content-Length > 0, or chunked (None)
            self._refuse(_BODY_REFUSED, "body")
        else:
            super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if not self.refused:
            super().allContentReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            self._linger(data)
        else:
            super().rawDataReceived(data)

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        self.idle_since = self.factory.now()

    def timeoutConnection(self) -> None:
        # HTTPChannel logs a line per timed-out client; an idle browser tab is no news.
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def _refuse(self, answer: bytes, why: str) -> None:
        self.refused = True
        self.factory.refused[why] += 1
        self.setTimeout(None)
        self.transport.write(answer)
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is None:
            self.transport.loseConnection()
            return
        lose_write()
        self._linger_call = self.callLater(LINGER_SECONDS, self._abort)

    def _linger(self, data: bytes) -> None:
        self._lingered += len(data)
        if self._lingered > LINGER_BYTES:
            self._abort()

    def _abort(self) -> None:
        self._cancel_linger()
        if self.transport is not None:
            self.transport.abortConnection()

    def _cancel_linger(self) -> None:
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None

    def connectionLost(self, reason: Any) -> None:
        self._cancel_linger()
        self.factory.channel_closed(self)
        super().connectionLost(reason)


class _Busy(protocol.Protocol):
    """The answer to a connection over the cap when none can make room: 503, closed."""

    def connectionMade(self) -> None:
        self.transport.write(_BUSY)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass


class LimitedSite(Site):
    """
    A ``Site`` with at most ``max_connections`` connections, each with a request
    deadline of ``idle_timeout`` seconds, serving :class:`LimitedChannel` channels.

    ``evicted``, ``busy_refused`` and ``refused`` (by reason: ``method``, ``body``) count
    what the bounds did, for tests and for whoever wants to show them.
    """

    def __init__(
        self, resource: Any, *, max_connections: int, idle_timeout: float, reactor: Any = None
    ) -> None:
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)
        self.max_connections = max_connections
        self.channels: set[LimitedChannel] = set()
        self._evicting: set[LimitedChannel] = set()
        self.evicted = 0
        self.busy_refused = 0
        self.refused = {"method": 0, "body": 0}

    def protocol(self) -> _GenericHTTPChannelProtocol:  # called as self.protocol()
        return _GenericHTTPChannelProtocol(LimitedChannel())

    def now(self) -> float:
        return self.reactor.seconds()

    def buildProtocol(self, addr: Any) -> Any:
        full = len(self.channels) - len(self._evicting) >= self.max_connections
        if full and not self._evict_one():
            self.busy_refused += 1
            busy = _Busy()
            busy.factory = self
            return busy
        return super().buildProtocol(addr)

    def _evict_one(self) -> bool:
        idle = [c for c in self.channels if not c.busy and c not in self._evicting]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since)
        self._evicting.add(victim)
        self.evicted += 1
        victim.transport.abortConnection()
        return True

    def channel_opened(self, channel: LimitedChannel) -> None:
        channel.idle_since = self.now()
        self.channels.add(channel)

    def channel_closed(self, channel: LimitedChannel) -> None:
        self.channels.discard(channel)
        self._evicting.discard(channel)
