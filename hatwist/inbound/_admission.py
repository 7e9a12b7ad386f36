# -*- test-case-name: tests.test_inbound_limits -*-
"""
Who may open one more inbound session: the connection slots, per pool and per IP.

Pure bookkeeping (no I/O), asked by the factory at every connect.  Two pools, so
that peers outside ``relay_from`` can never take the slots of those inside it:

  - peers inside ``relay_from`` share C{max_sessions} slots (each may hold a
    message in memory while it is submitted);
  - peers outside it get a separate, small C{max_unlisted} allowance: they can
    never relay, so all they can do with a slot is hold it.  Their sessions do
    not count against C{max_sessions}.

On top of both, one address holds at most C{max_per_ip} sessions, so a single
submitter in ``relay_from`` cannot lock out the others either.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

import attrs

Peer = ipaddress.IPv4Address | ipaddress.IPv6Address | None


def peer_of(transport: Any) -> Peer:
    """The peer's IP address (None for a peer that has none, e.g. a UNIX socket)."""
    host = getattr(transport.getPeer(), "host", None)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


@attrs.frozen
class Limits:
    """The connection limits, as configured (each at least 1)."""

    max_sessions: int
    max_per_ip: int
    max_unlisted: int


@attrs.frozen
class Refused:
    """Why a connect gets C{421}: enhanced code and text, for the reply and the log."""

    enhanced: str
    text: str


class Admission:
    """The sessions open now, by pool and by address."""

    def __init__(self) -> None:
        self._listed = 0
        self._unlisted = 0
        self._by_ip: Counter[Peer] = Counter()

    @property
    def listed(self) -> int:
        return self._listed

    @property
    def unlisted(self) -> int:
        return self._unlisted

    def per_ip(self, peer: Peer) -> int:
        return self._by_ip[peer]

    def check(self, limits: Limits, peer: Peer, listed: bool) -> Refused | None:
        """Why ``peer`` may not open one more session now, or None if it may."""
        if listed and self._listed >= limits.max_sessions:
            return Refused("4.3.2", "too many connections")
        if not listed and self._unlisted >= limits.max_unlisted:
            return Refused("4.3.2", "too many connections from outside relay_from")
        if self._by_ip[peer] >= limits.max_per_ip:
            return Refused("4.7.0", "too many connections from your address")
        return None

    def add(self, peer: Peer, listed: bool) -> None:
        if listed:
            self._listed += 1
        else:
            self._unlisted += 1
        self._by_ip[peer] += 1

    def remove(self, peer: Peer, listed: bool) -> None:
        if listed:
            self._listed -= 1
        else:
            self._unlisted -= 1
        self._by_ip[peer] -= 1
        if not self._by_ip[peer]:
            del self._by_ip[peer]
