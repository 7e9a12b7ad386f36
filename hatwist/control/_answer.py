# -*- test-case-name: tests.control.test_server -*-
"""
The lines of an answer before its last, paced by how fast the client reads them.

A bulk ``hatwist queue delete --binding b1`` sends one line per message.  Written
as fast as the relay acts, they would pile up in the transport's buffer of a
client that reads slowly (a terminal, a pipe into ``less``): a million lines are
tens of megabytes.  So the answer is a streaming producer on the transport: the
handler asks :meth:`Answer.ready` between slices, and it fires once the client has
read enough of what was sent.  A client that reads nothing for ``stall_timeout``
seconds is cut off (as one that never reads its last line is, see ``_server``),
and one that went away makes ``ready`` say False, so the action stops.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class Answer:
    """Write a line with ``answer(data)``; ask :meth:`ready` before the next batch."""

    def __init__(self, transport: Any, reactor: Any, stall_timeout: float) -> None:
        self._transport = transport
        self._reactor = reactor
        self._stall_timeout = stall_timeout
        self._paused = False
        self._waiting: list[defer.Deferred[bool]] = []
        self._stall: Any = None
        self.gone = False
        transport.registerProducer(self, True)

    def __call__(self, data: bytes) -> None:
        if not self.gone:
            self._transport.write(data)

    def ready(self) -> defer.Deferred[bool]:
        """True once the client may take more (at once unless its buffer is full);
        False when it went away or was cut off for reading nothing."""
        if self.gone or not self._paused:
            return defer.succeed(not self.gone)
        d: defer.Deferred[bool] = defer.Deferred()
        self._waiting.append(d)
        if self._stall is None:
            self._stall = self._reactor.callLater(self._stall_timeout, self._cut)
        return d

    def next_turn(self) -> defer.Deferred[bool]:
        """:meth:`ready`, and then a reactor turn: between batches of lines that cost
        CPU to make (a list's rows), so the rest of the relay runs in between."""
        d: defer.Deferred[bool] = defer.Deferred()

        def go_on(ok: bool) -> None:
            self._reactor.callLater(0, d.callback, ok)

        self.ready().addCallback(go_on)
        return d

    def close(self) -> None:
        """The last line follows: no more pacing."""
        if not self.gone:
            self._transport.unregisterProducer()
        self._end(gone=False)

    # -- IPushProducer (called by the transport) ---------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._cancel_stall()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(True)

    def stopProducing(self) -> None:
        """The connection is gone."""
        self._end(gone=True)

    def _cut(self) -> None:
        self._stall = None
        self._transport.abortConnection()  # connectionLost follows: stopProducing
        self._end(gone=True)

    def _end(self, *, gone: bool) -> None:
        self.gone = self.gone or gone
        self._cancel_stall()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(not self.gone)

    def _cancel_stall(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
