"""One delivery attempt of one message: MX, address, route, session (tests:
tests/delivery/test_attempt.py, tests/delivery/test_attempt_rig.py,
tests/delivery/test_attempt_tls_rig.py).

:class:`DeliveryAgent` turns an :class:`OutboundMessage` (the recipients of one domain)
into an :class:`AttemptResult` with a :class:`~hatwist.delivery.RecipientResult` for every
recipient, and never fails: whatever goes wrong becomes 4xx (try later) or 5xx (bounce)
results that say why. It walks the MX hosts best first, each host's addresses, and each
route to an address (:func:`hatwist.routing.choose_routes`), moving on after anything that
happened before the peer could hold the message (connect failures, no greeting, a refused
greeting, TLS trouble, a session that broke before the final dot was sent: the peer keeps
nothing until it answers that dot), and stopping at the first session that answered for
the recipients, or that broke while the final dot's reply was awaited, since by then the
peer may have the message and sending it elsewhere could deliver it twice.

Under ``tls = ifavailable`` an MX that offers STARTTLS and then fails it (the handshake
resets or stalls) gets one more session on the same address and route without STARTTLS
before the walk moves on, as with Postfix's ``smtp_tls_security_level = may``: an MX
with broken TLS would otherwise never get mail. ``required`` never does this.

Sessions are reused through a :class:`~hatwist.delivery.pool.SessionPool`; each attempt
emits exactly one structured log event (namespace ``hatwist.delivery.attempt``). What the
walk records and the answer it gives up with are :mod:`hatwist.delivery._walk`'s; the
endpoint for each route is :mod:`hatwist.delivery._endpoints`'.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger, LogLevel

from hatwist.config import Config, DeliverySettings, TLSMode
from hatwist.config.settings import normalize_domain
from hatwist.delivery._endpoints import route_endpoint
from hatwist.delivery._errors import SessionError, may_have_delivered, starttls_failed
from hatwist.delivery._values import Envelope, RecipientResult
from hatwist.delivery._walk import (
    BAD_CONFIG,
    INTERNAL,
    NoAnswer,
    RouteFailed,
    StopWalk,
    Walk,
    route_failed,
)
from hatwist.delivery.pool import PooledSession, PoolKey, SessionPool
from hatwist.mx import MXError, MXHost, MXResolver
from hatwist.routing import NoRoute, Route, choose_routes

#: The ``hatwist_event`` field of the one log event per attempt (metrics and the demo
#: observe it; the agent knows nothing of them).
ATTEMPT_EVENT = "delivery_attempt"

_log = Logger(namespace="hatwist.delivery.attempt")


@attrs.frozen
class OutboundMessage:
    """One message for the recipients of one domain, sent on behalf of ``binding``."""

    id: str
    binding: str
    domain: str
    envelope: Envelope
    content: bytes


@attrs.frozen
class AttemptResult:
    """
    What one attempt did: a result per recipient and where the attempt ended.

    ``route``, ``mx_host`` and ``mx_address`` name the session that answered (or the last
    one tried; ``None`` when no MX was reached). ``error`` is set when no session answered
    for the recipients: the reason they all got the same result.
    """

    message_id: str
    recipients: tuple[RecipientResult, ...]
    route: str | None
    mx_host: str | None
    mx_address: str | None
    duration: float
    error: str | None = None
    waiting_for_proxy: bool = False
    """True when every MX address was skipped only because no proxy was plumbed."""
    no_greeting: tuple[str, ...] = ()
    """Proxy servers (as configured) that connected but sent no 220 banner in this attempt:
    an unusable source IP or an unreachable MX behind HAProxy."""
    tls_skipped: str | None = None
    """Why the session that answered (or the last one tried) was plaintext although the
    MX offered STARTTLS: it refused STARTTLS, or STARTTLS failed and ``tls = ifavailable``
    retried without it. ``None`` when TLS was used, not offered, or not wanted."""

    def addresses(self, kind: str) -> tuple[str, ...]:
        """The recipients whose result is ``"delivered"``, ``"temporary"`` or ``"permanent"``."""
        return tuple(r.address for r in self.recipients if r.kind == kind)


class DeliveryAgent:
    """
    Delivers one message at a time (call :meth:`deliver` concurrently for several).

    :param config: the loaded configuration; assign ``agent.config`` to reload.
    :param registry: the ``ServerRegistry`` whose plumbed servers proxied routes use.
    :param resolver: the :class:`~hatwist.mx.MXResolver`.
    :param reactor: TCP, time and name resolution for endpoints and the pool's clock.
    :param pool: where sessions wait for the next message (a fresh pool by default).
    :param open_session: ``hatwist.delivery.client.open_session`` or a stand-in.
    :param trust_root: TLS trust for ``tls = required`` (default: the platform's).
    :param default_ehlo_hostname: the EHLO name when a binding sets no ``ehlo_hostname``;
        by default the host name (``socket.gethostname()``, which does no DNS lookup).
    """

    def __init__(
        self,
        config: Config,
        registry: Any,
        resolver: MXResolver,
        *,
        reactor: Any,
        pool: SessionPool | None = None,
        open_session: Callable[..., defer.Deferred[Any]] | None = None,
        trust_root: Any = None,
        default_ehlo_hostname: str | None = None,
    ) -> None:
        if open_session is None:
            from hatwist.delivery.client import open_session
        self.config = config
        self._registry = registry
        self._resolver = resolver
        self._reactor = reactor
        self.pool = pool if pool is not None else SessionPool(reactor=reactor)
        self._open_session = open_session
        self._trust_root = trust_root
        self._ehlo = default_ehlo_hostname or socket.gethostname()

    def deliver(self, message: OutboundMessage) -> defer.Deferred[AttemptResult]:
        """
        Try to deliver ``message`` once; always fires with an :class:`AttemptResult`.

        Cancelling it (service shutdown) aborts the session in progress and fails it with
        ``CancelledError``: no result is reported for an attempt that was cut short.
        """
        return defer.Deferred.fromCoroutine(self._deliver(message))

    def close(self) -> defer.Deferred[None]:
        """Close idle sessions (service shutdown)."""
        return self.pool.close()

    async def _deliver(self, message: OutboundMessage) -> AttemptResult:
        started = self._reactor.seconds()
        walk = Walk()
        try:
            outcome = await self._walk(message, walk)
        except defer.CancelledError:
            raise
        except Exception as e:
            _log.failure("delivery attempt of message {message_id} failed", message_id=message.id)
            outcome = NoAnswer(*INTERNAL, f"internal error: {type(e).__name__}: {e}")
        waiting_for_proxy = False
        if isinstance(outcome, NoAnswer):
            error, waiting_for_proxy = outcome.reason, outcome.waiting_for_proxy
            recipients = tuple(
                RecipientResult(address, outcome.code, f"{outcome.status} {outcome.reason}")
                for address in message.envelope.rcpt_to
            )
        else:
            recipients, error = outcome, None
        result = AttemptResult(
            message_id=message.id,
            recipients=recipients,
            route=walk.route,
            mx_host=walk.host.name if walk.host else None,
            mx_address=walk.address,
            duration=self._reactor.seconds() - started,
            error=error,
            waiting_for_proxy=waiting_for_proxy,
            no_greeting=tuple(walk.no_greeting),
            tls_skipped=walk.tls_skipped,
        )
        self._emit(message, result)
        return result

    async def _walk(
        self, message: OutboundMessage, walk: Walk
    ) -> tuple[RecipientResult, ...] | NoAnswer:
        """Per-recipient results from the first session that answered, or why none did."""
        try:
            settings = self.config.binding(message.binding).settings_for(message.domain)
        except KeyError as e:
            return NoAnswer(*BAD_CONFIG, str(e.args[0] if e.args else e))
        try:
            hosts = await self._resolver.resolve(message.domain)
        except MXError as e:
            return NoAnswer(e.code, e.status, e.reason)
        # Plumbed servers per address family, asked once per attempt (the registry rotates
        # its answer on every call) and for that family's source: a proxy whose path from
        # one source IP fails its health check still carries the other source's mail.
        plumbed: dict[int, list[Any]] = {}
        for host in hosts:
            for address in host.addresses:
                version = ipaddress.ip_address(address).version
                if settings.uses_proxy and version not in plumbed:
                    plumbed[version] = list(
                        self._registry.plumbed(
                            settings.proxy_servers, source=settings.source_for(version)
                        )
                    )
                routes = choose_routes(
                    settings, address, plumbed.get(version, []), binding=message.binding
                )
                if isinstance(routes, NoRoute):
                    walk.no_route(routes)
                    continue
                for route in routes:
                    walk.reach(host, address, route)
                    try:
                        outcome = await self._try(message, settings, host, address, route, walk)
                    except StopWalk as stop:
                        return walk.stopped(stop)
                    if isinstance(outcome, RouteFailed):
                        walk.failed(route, outcome)
                        continue
                    return outcome
        return walk.give_up(message.domain)

    async def _try(
        self,
        message: OutboundMessage,
        settings: DeliverySettings,
        host: MXHost,
        address: str,
        route: Route,
        walk: Walk,
    ) -> tuple[RecipientResult, ...] | RouteFailed:
        """
        The recipients' results over one route, or why this route could not take the
        message (move on). Raises :class:`StopWalk` when moving on is unsafe.
        """
        key = PoolKey(
            message.binding,
            route.describe(),
            address,
            normalize_domain(message.domain),
            settings.tls,
        )
        pooled = self.pool.take(key)
        if pooled is not None:
            walk.tls_skipped = pooled.tls_skipped
            try:
                return await self._send(pooled, message, settings)
            except SessionError as e:
                # An idle session the peer has since dropped (or refused RSET on): open a
                # fresh one.
                _log.debug(
                    "reused session to {address} failed ({error}); opening a new one",
                    address=address,
                    error=str(e),
                )
        opened = await self._open(settings, host, address, route)
        if isinstance(opened, RouteFailed):
            return opened
        session, walk.tls_skipped = opened
        try:
            pooled = self.pool.adopt(key, session, tls_skipped=walk.tls_skipped)
            return await self._send(pooled, message, settings)
        except SessionError as e:
            return RouteFailed(str(e))

    async def _open(
        self, settings: DeliverySettings, host: MXHost, address: str, route: Route
    ) -> tuple[Any, str | None] | RouteFailed:
        """
        A new session over ``route`` and why it is plaintext although the peer offered
        STARTTLS (``None`` when it is not), or why no session could be opened.

        Under ``tls = ifavailable`` a STARTTLS that failed (:func:`starttls_failed`) is
        tried once more on the same address and route without STARTTLS, as Postfix's
        ``may`` does: otherwise an MX whose TLS is broken would get no mail at all, while
        plaintext is what ``ifavailable`` settles for when TLS is not to be had anyway.
        Never under ``required``.
        """
        try:
            session = await self._connect(settings, host, address, route, settings.tls)
        except defer.CancelledError:
            raise
        except Exception as e:
            if settings.tls is not TLSMode.IFAVAILABLE or not starttls_failed(e):
                return route_failed(e, route)
            tls_failure = str(e)
        else:
            return session, getattr(session, "tls_skipped", None)
        try:
            session = await self._connect(settings, host, address, route, TLSMode.NO)
        except defer.CancelledError:
            raise
        except Exception as e:
            failed = route_failed(e, route)
            return attrs.evolve(
                failed, reason=f"{tls_failure}; then without STARTTLS: {failed.reason}"
            )
        return session, f"STARTTLS failed ({tls_failure}); retried in plaintext"

    def _connect(
        self,
        settings: DeliverySettings,
        host: MXHost,
        address: str,
        route: Route,
        tls: TLSMode,
    ) -> defer.Deferred[Any]:
        return self._open_session(
            route_endpoint(
                self._reactor,
                route,
                address,
                settings.remote_smtp_port,
                settings.connect_timeout,
            ),
            reactor=self._reactor,
            ehlo_hostname=settings.ehlo_hostname or self._ehlo,
            tls=tls,
            tls_hostname=host.name,
            trust_root=self._trust_root,
            connect_timeout=settings.connect_timeout,
            command_timeout=settings.smtp_timeout,
        )

    async def _send(
        self, pooled: PooledSession, message: OutboundMessage, settings: DeliverySettings
    ) -> tuple[RecipientResult, ...]:
        """
        Send over ``pooled``; give it back to the pool after, or drop it on error.

        Raises :class:`StopWalk` for a session that broke when the peer may already hold
        the message: sending it anywhere else could deliver it twice.
        """
        try:
            results = await pooled.session.send(message.envelope, message.content)
        except BaseException as e:
            self.pool.discard(pooled)
            if isinstance(e, SessionError) and may_have_delivered(e):
                raise StopWalk(str(e)) from None
            raise
        pooled.sent += 1
        self.pool.release(pooled, max_messages=settings.max_messages_per_connection)
        return tuple(results)

    def _emit(self, message: OutboundMessage, result: AttemptResult) -> None:
        kinds = {r.kind for r in result.recipients}
        level = LogLevel.info if kinds == {"delivered"} else LogLevel.warn
        _log.emit(
            level,
            "message {message_id} binding {binding} to {domain}: {codes} "
            "via {route} mx {mx_host} [{mx_address}] in {duration:.3f}s{tls_text}{error_text}",
            message_id=message.id,
            binding=message.binding,
            domain=message.domain,
            route=result.route,
            mx_host=result.mx_host,
            mx_address=result.mx_address,
            codes={r.address: r.code for r in result.recipients},
            duration=result.duration,
            error=result.error,
            error_text=f": {result.error}" if result.error else "",
            tls_skipped=result.tls_skipped,
            tls_text=f"; TLS skipped: {result.tls_skipped}" if result.tls_skipped else "",
            no_greeting=list(result.no_greeting),
            hatwist_event=ATTEMPT_EVENT,
        )
