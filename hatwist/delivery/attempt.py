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

Bounds a hostile domain cannot raise: at most ``mx_address_limit`` addresses get a
session attempt (Postfix's ``smtp_mx_address_limit``; addresses without a route do not
count), and the whole attempt, MX lookup included, ends at ``attempt_timeout``
(:mod:`hatwist.delivery._deadline`): whatever is in flight then is aborted and every
recipient gets a temporary 451. A message whose :attr:`OutboundMessage.load_content` is
set is read only once a session is ready for it, so attempts still walking (waiting for
connects and banners) hold no content.

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
from hatwist.delivery._deadline import AttemptDeadline, DeadlinePassed
from hatwist.delivery._endpoints import route_endpoint
from hatwist.delivery._errors import SessionError, may_have_delivered, starttls_failed
from hatwist.delivery._values import AttemptResult, OutboundMessage, RecipientResult
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
        ``CancelledError`` at once: no further MX is tried (the abort looks like a lost
        connection, which :class:`AttemptDeadline` tells apart) and no result is
        reported for an attempt that was cut short.
        """
        return defer.Deferred.fromCoroutine(self._deliver(message))

    def close(self) -> defer.Deferred[None]:
        """Close idle sessions (service shutdown)."""
        return self.pool.close()

    async def _deliver(self, message: OutboundMessage) -> AttemptResult:
        started = self._reactor.seconds()
        walk = Walk()
        deadline = AttemptDeadline(self._reactor, self._attempt_timeout(message))
        try:
            outcome = await self._walk(message, walk, deadline)
        except defer.CancelledError:
            raise
        except Exception as e:
            _log.failure("delivery attempt of message {message_id} failed", message_id=message.id)
            outcome = NoAnswer(*INTERNAL, f"internal error: {type(e).__name__}: {e}")
        finally:
            deadline.stop()
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
            mx_reached=walk.reached,
        )
        self._emit(message, result)
        return result

    def _attempt_timeout(self, message: OutboundMessage) -> float:
        try:
            settings = self.config.binding(message.binding).settings_for(message.domain)
        except KeyError:  # the walk reports the unknown binding at once
            return attrs.fields(DeliverySettings).attempt_timeout.default
        return settings.attempt_timeout

    async def _walk(
        self, message: OutboundMessage, walk: Walk, deadline: AttemptDeadline
    ) -> tuple[RecipientResult, ...] | NoAnswer:
        """Per-recipient results from the first session that answered, or why none did."""
        try:
            return await self._walk_within(message, walk, deadline)
        except DeadlinePassed as passed:
            return walk.timed_out(passed.seconds, passed.detail, message.domain)

    async def _walk_within(
        self, message: OutboundMessage, walk: Walk, deadline: AttemptDeadline
    ) -> tuple[RecipientResult, ...] | NoAnswer:
        try:
            settings = self.config.binding(message.binding).settings_for(message.domain)
        except KeyError as e:
            return NoAnswer(*BAD_CONFIG, str(e.args[0] if e.args else e))
        try:
            hosts = await deadline.wait(self._resolver.resolve(message.domain))
        except MXError as e:
            return NoAnswer(e.code, e.status, e.reason)
        places = [(host, address) for host in hosts for address in host.addresses]
        # Plumbed servers per address family, asked once per attempt (the registry rotates
        # its answer on every call) and for that family's source: a proxy whose path from
        # one source IP fails its health check still carries the other source's mail.
        plumbed: dict[int, list[Any]] = {}
        for index, (host, address) in enumerate(places):
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
            if not walk.try_address(settings.mx_address_limit, len(places) - index):
                break
            for route in routes:
                deadline.check()
                walk.reach(host, address, route)
                try:
                    outcome = await self._try(
                        message, settings, host, address, route, walk, deadline
                    )
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
        deadline: AttemptDeadline,
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
                results = await self._send(pooled, message, settings, deadline)
            except (StopWalk, DeadlinePassed):
                walk.reached = True  # broken after the dot, or stuck mid-session: it is there
                raise
            except SessionError as e:
                # An idle session the peer has since dropped (or refused RSET on): open a
                # fresh one.
                _log.debug(
                    "reused session to {address} failed ({error}); opening a new one",
                    address=address,
                    error=str(e),
                )
            else:
                walk.reached = True
                return results
        opened = await self._open(settings, host, address, route, deadline)
        if isinstance(opened, RouteFailed):
            return opened
        session, walk.tls_skipped = opened
        walk.reached = True
        try:
            pooled = self.pool.adopt(key, session, tls_skipped=walk.tls_skipped)
            return await self._send(pooled, message, settings, deadline)
        except SessionError as e:
            return RouteFailed(str(e))

    async def _open(
        self,
        settings: DeliverySettings,
        host: MXHost,
        address: str,
        route: Route,
        deadline: AttemptDeadline,
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
            session = await deadline.wait(
                self._connect(settings, host, address, route, settings.tls)
            )
        except (defer.CancelledError, DeadlinePassed):
            raise
        except Exception as e:
            if settings.tls is not TLSMode.IFAVAILABLE or not starttls_failed(e):
                return route_failed(e, route)
            tls_failure = str(e)
        else:
            return session, getattr(session, "tls_skipped", None)
        try:
            session = await deadline.wait(self._connect(settings, host, address, route, TLSMode.NO))
        except (defer.CancelledError, DeadlinePassed):
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
        self,
        pooled: PooledSession,
        message: OutboundMessage,
        settings: DeliverySettings,
        deadline: AttemptDeadline,
    ) -> tuple[RecipientResult, ...]:
        """
        Send over ``pooled``; give it back to the pool after, or drop it on error.

        Raises :class:`StopWalk` for a session that broke when the peer may already hold
        the message: sending it anywhere else could deliver it twice. The deadline
        passing aborts the session (:class:`DeadlinePassed`); if that was during the wait
        for the final dot's reply, the message may have been delivered, as with any
        session broken there, and the retry may deliver it twice (RFC 5321 section 6.1).
        """
        content = message.content
        if message.load_content is not None:
            try:
                content = await deadline.wait(defer.maybeDeferred(message.load_content))
            except BaseException:
                # Nothing was said over the session: it can carry the next message.
                self.pool.release(pooled, max_messages=settings.max_messages_per_connection)
                raise
        try:
            results = await deadline.wait(pooled.session.send(message.envelope, content))
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
            "message {message_id} binding {binding}{group_text} to {domain}: {codes} "
            "via {route} mx {mx_host} [{mx_address}] in {duration:.3f}s{tls_text}{error_text}",
            message_id=message.id,
            binding=message.binding,
            group=message.group,
            group_text=f" (group {message.group})" if message.group else "",
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
