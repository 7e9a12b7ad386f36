# -*- test-case-name: tests.delivery.test_attempt_limits -*-
"""
One deadline over a whole delivery attempt (``attempt_timeout``).

Each step of an attempt has its own deadline (``connect_timeout``, ``smtp_timeout`` per
command), but a domain with many MX addresses that each take the full connect deadline,
or an MX that answers every command just before its deadline, would hold a delivery slot
for hours. :class:`AttemptDeadline` bounds the sum: every wait of the attempt goes
through :meth:`AttemptDeadline.wait`, and when the deadline passes the wait in progress
is cancelled (which aborts its connection) and :class:`DeadlinePassed` ends the walk.
Cancelling the attempt (shutdown) goes through the same waits and ends the walk with
``CancelledError`` at once, never with a move to the next MX.
Time comes from the injected reactor, so tests drive it with ``task.Clock``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

T = TypeVar("T")


def _forward(result: Any, relay: defer.Deferred[Any]) -> None:
    """Hand ``d``'s result to the relay awaited in its place, unless the relay was
    cancelled already (then the aborted step's own failure is dropped)."""
    if not relay.called:
        relay.callback(result)


class DeadlinePassed(Exception):
    """The attempt's deadline passed; ``detail`` is how the step in progress ended."""

    def __init__(self, seconds: float, detail: str = "") -> None:
        super().__init__(f"attempt deadline of {seconds:g}s passed")
        self.seconds = seconds
        self.detail = detail


class AttemptDeadline:
    """Cancels the attempt's current wait once ``seconds`` have passed; call :meth:`stop`
    when the attempt ends."""

    def __init__(self, reactor: IReactorTime, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.cancelled = False
        """The attempt itself was cancelled (shutdown): every wait from now on raises
        ``CancelledError``, whatever the step in progress failed with, so the walk
        tries no further MX."""
        self._current: defer.Deferred[Any] | None = None
        self._call: IDelayedCall | None = reactor.callLater(seconds, self._expire)

    def _expire(self) -> None:
        self._call = None
        self.expired = True
        current, self._current = self._current, None
        if current is not None:
            current.cancel()

    def check(self) -> None:
        """Raise :class:`DeadlinePassed` if the deadline has passed, ``CancelledError``
        if the attempt was cancelled (before a new step)."""
        if self.cancelled:
            raise defer.CancelledError()
        if self.expired:
            raise DeadlinePassed(self.seconds)

    async def wait(self, d: defer.Deferred[T]) -> T:
        """``await d``, unless the deadline passes first: then ``d`` is cancelled and
        :class:`DeadlinePassed` is raised, whatever ``d`` failed with on cancelling (an
        aborted session fails with its own error, naming the stage it was in).

        Cancelling the attempt's Deferred cancels what the coroutine awaits, which is
        the relay awaited here: that marks the attempt cancelled before ``d`` is
        aborted, so the abort -- which surfaces as a lost connection -- raises
        ``CancelledError`` rather than sending the walk on to the next MX."""
        if self.cancelled or self.expired:
            d.cancel()
            d.addErrback(lambda _: None)
            self.check()
        self._current = d
        relay: defer.Deferred[T] = defer.Deferred(lambda _: self._cancelled(d))
        d.addBoth(_forward, relay)
        try:
            return await relay
        except Exception as e:
            if self.cancelled:
                raise defer.CancelledError() from None
            if self.expired:
                detail = "" if isinstance(e, defer.CancelledError) else str(e)
                raise DeadlinePassed(self.seconds, detail) from None
            raise
        finally:
            if self._current is d:
                self._current = None

    def _cancelled(self, d: defer.Deferred[Any]) -> None:
        self.cancelled = True
        d.cancel()

    def stop(self) -> None:
        """The attempt is over: no timer is left behind."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
