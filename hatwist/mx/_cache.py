# -*- test-case-name: tests.test_mx -*-
"""
DNS answers kept for reuse within their TTL (RFC 2181, RFC 2308).

Pure: time comes from the injected ``IReactorTime``; nothing here queries anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.names import dns

#: Longest an answer is reused, whatever its TTL says (RFC 2181 section 8 allows a cap).
MAX_CACHE_SECONDS = 3600

#: Most answers kept at once; beyond it the oldest go first.
DEFAULT_CACHE_SIZE = 10_000


def lifetime(answers: Sequence[dns.RRHeader], authority: Sequence[dns.RRHeader]) -> int:
    """Seconds an answer may be reused: its smallest TTL; for "no such record" the
    zone's SOA minimum (RFC 2308); 0 when nothing says."""
    if answers:
        return min(rr.ttl for rr in answers)
    soas = [rr for rr in authority if rr.type == dns.SOA]
    return min((min(rr.ttl, rr.payload.minimum) for rr in soas), default=0)


class AnswerCache:
    """
    Answers by (name, type) until their TTL runs out.

    Why: a busy relay sends message after message to the same few domains, and every
    attempt asks for the MX records and then A and AAAA of every MX host. Failures are
    never kept: the next attempt asks again.
    """

    def __init__(self, reactor: IReactorTime, size: int) -> None:
        self._reactor = reactor
        self._size = size
        self._entries: dict[tuple[bytes, int], tuple[float, list[dns.RRHeader]]] = {}

    def get(self, key: tuple[bytes, int]) -> list[dns.RRHeader] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answers = entry
        if expires <= self._reactor.seconds():
            del self._entries[key]
            return None
        return answers

    def expires(self, key: tuple[bytes, int]) -> float | None:
        """When the live answer for ``key`` runs out, or None when there is none."""
        entry = self._entries.get(key)
        return None if entry is None or entry[0] <= self._reactor.seconds() else entry[0]

    def put(self, key: tuple[bytes, int], answers: list[dns.RRHeader], seconds: int) -> None:
        if seconds <= 0 or self._size <= 0:
            return
        self._entries.pop(key, None)
        while len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]
        expires = self._reactor.seconds() + min(seconds, MAX_CACHE_SECONDS)
        self._entries[key] = (expires, answers)
