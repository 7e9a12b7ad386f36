"""Idle SMTP sessions kept for the next message on the same path (tests:
tests/delivery/test_attempt_pool.py).

Opening a session costs a TCP connect, the proxy hop, the banner, EHLO and maybe STARTTLS;
sending a second message over it costs one RSET. So a session that just delivered a message
is parked here, keyed by everything that must match for the next message to use it: the
binding, the route (the proxy server and the source IP, or direct), the MX address, the
destination domain and the ``tls`` setting it was opened under. It is closed when it has
carried ``max_messages`` messages, or after sitting idle for :data:`DEFAULT_IDLE_TIMEOUT`
seconds, because receivers drop idle clients after a while (RFC 5321 section 4.5.3.2.7
lets them after 5 minutes) and an idle session holds a slot on the peer.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hatwist.config import TLSMode

_log = Logger()

#: Seconds an unused session is kept open for another message. Short: the point is to catch
#: messages that arrive together, not to keep connections to every MX ever seen.
DEFAULT_IDLE_TIMEOUT = 10.0


@attrs.frozen
class PoolKey:
    """
    What must match for a session to carry another message.

    ``tls`` is the setting the session was opened to satisfy, not what it ended up with
    (as Postfix keys its connection cache by the requested TLS level): a session opened
    under ``ifavailable`` may be plaintext (STARTTLS not offered, refused, or its handshake
    failed and a plaintext session replaced it), which suits the next ``ifavailable``
    message and never a ``required`` one, even after a reload changed the setting.
    """

    binding: str
    route: str
    address: str
    domain: str
    tls: TLSMode


@attrs.define(eq=False)
class PooledSession:
    """
    One session and how many messages it has carried; lent out by :class:`SessionPool`.

    ``session`` is an ``OutboundSession`` (``is_open``, ``quit()``, ``abort()``).
    ``tls_skipped`` says why it is plaintext although the peer offered STARTTLS (for the
    log of every message it carries); ``None`` when it is not.
    """

    key: PoolKey
    session: Any
    sent: int = 0
    tls_skipped: str | None = None
    _expiry: IDelayedCall | None = attrs.field(default=None, alias="expiry")


class SessionPool:
    """
    Idle sessions per :class:`PoolKey`, each closed after a while or after enough messages.

    A session is either lent out (its borrower owns it) or idle here, never both: the
    borrower hands it back with :meth:`release` or gives up on it with :meth:`discard`.
    """

    def __init__(
        self, *, reactor: IReactorTime, idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    ) -> None:
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._idle: dict[PoolKey, list[PooledSession]] = {}
        self._closing: set[defer.Deferred[Any]] = set()

    def adopt(self, key: PoolKey, session: Any, *, tls_skipped: str | None = None) -> PooledSession:
        """Wrap a freshly opened ``session`` so that it can be released into the pool."""
        pooled = PooledSession(key=key, session=session, tls_skipped=tls_skipped)
        when_closed = getattr(session, "when_closed", None)
        if when_closed is not None:
            # A peer that closes an idle session (421 timeout) frees its slot at once.
            # Watched once per session, however many messages it carries.
            when_closed().addCallback(lambda _: self._forget(pooled))
        return pooled

    def take(self, key: PoolKey) -> PooledSession | None:
        """An idle, still open session for ``key`` (most recently used first), or None."""
        idle = self._idle.get(key, [])
        while idle:
            pooled = idle.pop()
            self._stop_timer(pooled)
            if pooled.session.is_open:
                if not idle:
                    del self._idle[key]
                return pooled
        self._idle.pop(key, None)
        return None

    def release(self, pooled: PooledSession, *, max_messages: int) -> None:
        """
        Hand back a session after a message: keep it idle, or close it politely if it has
        carried ``max_messages`` messages or the peer already closed it.
        """
        if not pooled.session.is_open:
            return
        if pooled.sent >= max_messages:
            self._quit(pooled)
            return
        pooled._expiry = self._reactor.callLater(self._idle_timeout, self._expire, pooled)
        self._idle.setdefault(pooled.key, []).append(pooled)

    def discard(self, pooled: PooledSession) -> None:
        """Drop a session that failed: abort it, never reuse it."""
        self._stop_timer(pooled)
        if pooled.session.is_open:
            pooled.session.abort()

    def idle_count(self, key: PoolKey | None = None) -> int:
        """How many sessions sit idle (for ``key``, or in total): for status and tests."""
        if key is not None:
            return len(self._idle.get(key, []))
        return sum(len(idle) for idle in self._idle.values())

    def close(self) -> defer.Deferred[None]:
        """QUIT every idle session; fires when they (and earlier QUITs) are done."""
        for idle in self._idle.values():
            for pooled in idle:
                self._stop_timer(pooled)
                self._quit(pooled)
        self._idle.clear()
        return defer.DeferredList(list(self._closing)).addCallback(lambda _: None)

    def _expire(self, pooled: PooledSession) -> None:
        pooled._expiry = None
        if self._forget(pooled):
            self._quit(pooled)

    def _forget(self, pooled: PooledSession) -> bool:
        """Take ``pooled`` out of the idle list (if it is there); say whether it was."""
        idle = self._idle.get(pooled.key, [])
        if pooled not in idle:
            return False
        idle.remove(pooled)
        if not idle:
            del self._idle[pooled.key]
        self._stop_timer(pooled)
        return True

    def _stop_timer(self, pooled: PooledSession) -> None:
        if pooled._expiry is not None and pooled._expiry.active():
            pooled._expiry.cancel()
        pooled._expiry = None

    def _quit(self, pooled: PooledSession) -> None:
        """Send QUIT; a peer that does not answer is the session's deadline's problem."""
        d = defer.maybeDeferred(pooled.session.quit)

        def done(result: object) -> None:
            self._closing.discard(d)
            if isinstance(result, Failure):
                _log.debug(
                    "QUIT on idle session to {address} failed: {error}",
                    address=pooled.key.address,
                    error=result.getErrorMessage(),
                )

        self._closing.add(d)
        d.addBoth(done)
