# -*- test-case-name: tests.delivery.test_attempt -*-
"""
The bookkeeping of one delivery attempt's walk over MX hosts, addresses and routes.

Pure: it records where the walk got to and why each place failed, and turns that into
the one answer every recipient gets when no session took the message. Keeping it apart
from :mod:`hatwist.delivery.attempt` leaves the agent with the walk's order and safety
rules only.
"""

from __future__ import annotations

import attrs

from hatwist.delivery._errors import ConnectFailed, NoGreeting, SessionError
from hatwist.mx import MXHost
from hatwist.routing import NoRoute, ProxyRoute, Route

#: The reply every recipient gets when no session took the message (RFC 3463: 4.4.1 "no
#: answer from host", 4.4.4 "unable to route", 4.3.5 "system incorrectly configured").
NO_SESSION = (451, "4.4.1")
PROXY_NO_GREETING = "proxy connected, no greeting"
NO_ROUTE = (451, "4.4.4")
BAD_CONFIG = (451, "4.3.5")
INTERNAL = (451, "4.3.0")


@attrs.frozen
class NoAnswer:
    """Why no session answered for the recipients: they all get ``code``/``status``."""

    code: int
    status: str
    reason: str
    waiting_for_proxy: bool = False


class StopWalk(Exception):
    """A session broke after the peer was given the transaction: no other MX this time."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class RouteFailed:
    """Why one route could not take the message; the attempt moves on to the next."""

    reason: str
    proxy_unreachable: bool = False
    """The proxy itself refused or timed out the connect: HAProxy being down, which the
    health checker has not noticed yet (an MX it cannot reach shows as no greeting)."""
    no_greeting: bool = False
    reached: bool = False
    """The MX greeted before this route failed (a refused greeting or EHLO, TLS trouble,
    a session that broke later): the destination answers."""


def route_failed(error: Exception, route: Route) -> RouteFailed:
    """Why opening a session over ``route`` failed, classified for the walk."""
    if isinstance(error, SessionError) and not isinstance(error, (NoGreeting, ConnectFailed)):
        return RouteFailed(str(error), reached=True)
    if isinstance(error, NoGreeting):
        if isinstance(route, ProxyRoute):
            return RouteFailed(f"{PROXY_NO_GREETING} ({error})", no_greeting=True)
        return RouteFailed(f"no greeting ({error})")
    if isinstance(error, ConnectFailed):
        return RouteFailed(str(error), proxy_unreachable=isinstance(route, ProxyRoute))
    # Anything else about one route (a proxy host name that does not resolve, ...) must
    # not stop the others from being tried.
    return RouteFailed(f"{type(error).__name__}: {error}")


@attrs.define
class Walk:
    """What an attempt tried so far: the last place it reached and why each failed."""

    host: MXHost | None = None
    address: str | None = None
    route: str | None = None
    failures: list[str] = attrs.Factory(list)
    skipped: list[str] = attrs.Factory(list)
    only_waiting_for_proxy: bool = True
    """So far every address was skipped for want of a plumbed proxy, or failed only
    because the proxy could not be reached: worth waiting for the health checker."""
    no_greeting: list[str] = attrs.Factory(list)
    tls_skipped: str | None = None
    """Why the last session tried is plaintext although its peer offered STARTTLS."""
    addresses_tried: int = 0
    """MX addresses a route was tried to (``mx_address_limit`` counts these)."""
    not_tried: str | None = None
    """Why the walk stopped before the last address: the limit and how many were left."""
    reached: bool = False
    """Some MX greeted a session in this attempt (see ``AttemptResult.mx_reached``)."""

    def try_address(self, limit: int, left: int) -> bool:
        """True when one more address may be tried; else records that ``left`` addresses
        (this one included) are not tried because of ``mx_address_limit``."""
        if self.addresses_tried >= limit:
            self.not_tried = f"mx_address_limit {limit} reached, {left} more not tried"
            return False
        self.addresses_tried += 1
        return True

    def reach(self, host: MXHost, address: str, route: Route) -> None:
        """The walk tries ``route`` to ``address`` of ``host`` next."""
        self.host, self.address, self.route = host, address, route.describe()
        self.tls_skipped = None

    def place(self) -> str:
        """Where the walk is, as failure reasons name it."""
        return f"{self.host.name} [{self.address}] via {self.route}"

    def no_route(self, why: NoRoute) -> None:
        """An MX address was skipped: no route to it."""
        self.skipped.append(why.reason)
        self.only_waiting_for_proxy &= why.waiting_for_proxy

    def failed(self, route: Route, why: RouteFailed) -> None:
        """The route just reached could not take the message."""
        if why.no_greeting and isinstance(route, ProxyRoute):
            self.no_greeting.append(route.server.text)
        self.only_waiting_for_proxy &= why.proxy_unreachable
        self.reached |= why.reached
        self.failures.append(f"{self.place()}: {why.reason}")

    def stopped(self, why: StopWalk) -> NoAnswer:
        """The answer when the session just reached broke with the message perhaps taken."""
        return NoAnswer(*NO_SESSION, f"{self.place()}: {why.reason}")

    def timed_out(self, seconds: float, detail: str, domain: str) -> NoAnswer:
        """The answer when ``attempt_timeout`` cut the walk short (``detail``: how the step
        in progress ended). Temporary: the MX may answer in time next attempt."""
        where = f"at {self.place()}" if self.host is not None else f"resolving {domain}"
        reason = f"attempt deadline of {seconds:g}s passed {where}"
        if detail:
            reason += f" ({detail})"
        if self.failures:
            reason += "; before: " + "; ".join(self.failures)
        return NoAnswer(*NO_SESSION, reason)

    def give_up(self, domain: str) -> NoAnswer:
        """The answer for every recipient when no session took the message."""
        skipped = list(dict.fromkeys(self.skipped))
        waiting = bool(self.failures or skipped) and self.only_waiting_for_proxy
        if self.failures:
            notes = [self.not_tried] if self.not_tried else []
            reason = f"no MX of {domain} took the message: " + "; ".join(
                self.failures + skipped + notes
            )
            return NoAnswer(*NO_SESSION, reason, waiting_for_proxy=waiting)
        return NoAnswer(
            *NO_ROUTE,
            f"no usable route to any MX of {domain}: " + "; ".join(skipped),
            waiting_for_proxy=waiting,
        )
