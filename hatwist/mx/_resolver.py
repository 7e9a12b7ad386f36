# -*- test-case-name: tests.test_mx -*-
"""
The lookups themselves: MX, then A and AAAA of every MX host, through one ``IResolver``,
under one overall deadline, turned into the ordered :class:`MXHost` values to try.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from itertools import groupby
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.names.client import Resolver
from twisted.python.failure import Failure

from hatwist.mx._cache import DEFAULT_CACHE_SIZE, AnswerCache, lifetime
from hatwist.mx._errors import (
    NoMXAddresses,
    NoSuchDomain,
    NullMX,
    TemporaryDNSError,
    UnencodableDomain,
)

_log = Logger()

#: Seconds between the retries of one DNS query (``client.Resolver`` semantics: the query is
#: re-sent after each value, and fails after the last one).
DEFAULT_TIMEOUT: tuple[int, ...] = (1, 3, 11)

#: The file the system resolver reads (and re-reads every 60 s while it is in use).
SYSTEM_RESOLV_CONF = "/etc/resolv.conf"

#: Slack added to the overall deadline of :meth:`MXResolver.resolve` beyond the resolver's
#: own retry budget: the deadline is a safety net against a resolver that never answers.
DEADLINE_SLACK = 1.0

#: How many CNAMEs to follow from a name before giving up on it (RFC 1034 allows chains but
#: warns against them; loops must end).
MAX_CNAME_HOPS = 8

#: MX hosts whose addresses are looked up, best first. A hostile domain may publish
#: hundreds of MX records; each host costs two queries (and two UDP sockets) at once, and an
#: attempt tries at most ``mx_address_limit`` (default 5) addresses anyway.
MAX_MX_HOSTS = 10

#: RFC 1035 section 2.3.4: octets in one label, and in a whole name written as text.
MAX_LABEL = 63
MAX_NAME = 253

#: The ``hatwist_event`` of the log event for an MX host skipped for its unusable name.
MX_SKIPPED_EVENT = "mx_skipped"

#: The ``IResolver`` method for each record type asked for.
_LOOKUPS = {dns.MX: "lookupMailExchange", dns.A: "lookupAddress", dns.AAAA: "lookupIPV6Address"}


@attrs.frozen
class MXHost:
    """
    One mail exchanger of a domain, with all its addresses (IPv4 first, then IPv6).

    ``preference`` is 0 and ``name`` is the domain itself for an implicit MX.
    """

    name: str
    preference: int
    addresses: tuple[str, ...]


def build_resolver(
    server: tuple[str, int] | None,
    *,
    reactor: Any,
    timeout: Sequence[int] = DEFAULT_TIMEOUT,
) -> IResolver:
    """
    Build the ``IResolver`` hatwist uses for MX lookups.

    With a configured ``resolver`` (``server`` is ``(ip, port)``) this is a plain
    ``client.Resolver`` talking to that server only. Without one it is the system's resolver,
    reading :data:`SYSTEM_RESOLV_CONF`. Call this when the service starts, never at import
    or config-parse time: the system resolver reads the file right away (a small, one-off
    blocking read) and then re-checks it every 60 s with a reactor timer, which
    :meth:`MXResolver.close` cancels.

    ``client.createResolver`` is deliberately not used: even with ``servers`` it reads
    /etc/resolv.conf and /etc/hosts and leaves that 60 s timer behind.
    """
    if server is not None:
        return Resolver(servers=[tuple(server)], timeout=tuple(timeout), reactor=reactor)
    return Resolver(resolv=SYSTEM_RESOLV_CONF, timeout=tuple(timeout), reactor=reactor)


def _records(answers: Sequence[dns.RRHeader], rtype: int) -> list[Any]:
    """
    The payloads of the answers of type ``rtype``.

    A recursive server answers a question about an alias with the CNAME chain followed by
    the records of the type asked for, so everything else in the answer is ignored.
    """
    return [rr.payload for rr in answers if rr.type == rtype]


def _alias_target(answers: Sequence[dns.RRHeader], qname: bytes) -> bytes | None:
    """
    Where the CNAME chain in ``answers`` starting at ``qname`` ends, or ``None`` if no chain.

    An authoritative server answers a question about an alias with the CNAME alone (and
    maybe the target's addresses); the caller then asks again about the chain's end.
    """
    aliases = {rr.name.name.lower(): rr.payload.name.name for rr in answers if rr.type == dns.CNAME}
    name, hops = qname, 0
    while name.lower() in aliases and hops < MAX_CNAME_HOPS:
        name, hops = aliases[name.lower()], hops + 1
    return None if hops == 0 else name


def _name(name: dns.Name) -> str:
    """A DNS name as text, without the trailing dot; the root is the empty string."""
    return name.name.decode("ascii", "replace").rstrip(".")


class _Unencodable(ValueError):
    """A name that has no DNS wire form; the message says why."""


def _query_name(domain: str) -> bytes:
    """
    The wire form of ``domain``: IDNA (punycode) for international names.

    Raises :class:`_Unencodable` for a name DNS cannot carry, instead of the bare
    ``UnicodeError`` the codec raises (or a query the resolver would send anyway).
    """
    name = domain[:-1] if domain.endswith(".") else domain
    try:
        wire = name.encode("ascii")
    except UnicodeEncodeError:
        try:
            wire = name.encode("idna")
        except UnicodeError as e:
            raise _Unencodable(f"IDNA refuses it ({e})") from None
    labels = wire.split(b".")
    if not wire or any(not label for label in labels):
        raise _Unencodable("it has an empty label")
    longest = max(len(label) for label in labels)
    if longest > MAX_LABEL:
        raise _Unencodable(f"a label is {longest} octets long (at most {MAX_LABEL})")
    if len(wire) > MAX_NAME:
        raise _Unencodable(f"it is {len(wire)} octets long (at most {MAX_NAME})")
    return wire


class MXResolver:
    """
    Resolves a domain to the ordered mail exchangers to try, with their addresses.

    :param resolver: any ``twisted.names`` ``IResolver`` (see :func:`build_resolver`).
    :param reactor: the ``IReactorTime`` that enforces the overall deadline of a lookup.
    :param timeout: the per-query retry schedule handed to the resolver.
    :param rng: the source of the shuffle of equal preferences (inject a seeded
        ``random.Random`` in tests).
    :param cache_size: how many answers to keep for reuse within their TTL (0: none).
    """

    def __init__(
        self,
        resolver: IResolver,
        *,
        reactor: IReactorTime,
        timeout: Sequence[int] = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._resolver = resolver
        self._cache = AnswerCache(reactor, cache_size)
        self._reactor = reactor
        self._timeout = tuple(timeout)
        self._random = rng if rng is not None else random.Random()
        self._cache_size = cache_size
        # Whole answers (the hosts of a domain) until the first of their DNS answers runs
        # out: a busy relay asks for the same domains message after message, and going
        # through the per-query cache cost ~15% of the reactor's Python time per message.
        self._hosts: dict[str, tuple[float, tuple[MXHost, ...]]] = {}
        # An MX query, then address queries in parallel: two retry budgets at most.
        self._deadline = 2 * sum(self._timeout) + DEADLINE_SLACK

    def close(self) -> None:
        """
        Stop the resolver's background work (the system resolver's resolv.conf re-read timer).

        ``client.Resolver`` keeps that timer in a private attribute and offers no public way
        to stop it; a stopped service must not leave it behind.
        """
        call = getattr(self._resolver, "_parseCall", None)
        if call is not None and call.active():
            call.cancel()

    def resolve(self, domain: str) -> defer.Deferred[tuple[MXHost, ...]]:
        """
        The MX hosts to try for ``domain``, best first, each with at least one address.

        Fails with :class:`NullMX`, :class:`NoSuchDomain` (permanent),
        :class:`TemporaryDNSError` or :class:`NoMXAddresses` (temporary).

        Within the TTLs of every answer it was built from, a domain's hosts come back at
        once (an already fired Deferred), with equal preferences shuffled again.
        """
        key = domain.lower()
        known = self._hosts.get(key)
        if known is not None:
            if known[0] > self._reactor.seconds():
                return defer.succeed(self._reshuffle(known[1]))
            del self._hosts[key]
        d = defer.ensureDeferred(self._resolve(domain))

        def timedOut(result: object, timeout: float) -> Failure:
            # Called only when the deadline fired, whatever the cancelled lookup turned into.
            return Failure(
                TemporaryDNSError(
                    domain, f"DNS lookup for {domain} did not finish in {timeout:g} s"
                )
            )

        d.addTimeout(self._deadline, self._reactor, onTimeoutCancel=timedOut)
        return d

    def known_families(self, domain: str) -> frozenset[int] | None:
        """
        The address families (4, 6) of ``domain``'s MX hosts while a resolved answer is
        cached, else None: no query is made.  The scheduler asks it to choose, among a
        binding_group's bindings, one with a plumbed proxy path for those families.
        """
        known = self._hosts.get(domain.lower())
        if known is None or known[0] <= self._reactor.seconds():
            return None
        return frozenset(6 if ":" in address else 4
                         for host in known[1] for address in host.addresses)

    def _reshuffle(self, hosts: tuple[MXHost, ...]) -> tuple[MXHost, ...]:
        """``hosts`` with each run of equal preference shuffled, as :meth:`_order` does."""
        if len(hosts) < 2:
            return hosts
        shuffled: list[MXHost] = []
        for _preference, group in groupby(hosts, key=lambda h: h.preference):
            same = list(group)
            self._random.shuffle(same)
            shuffled += same
        return tuple(shuffled)

    def _remember(self, domain: str, hosts: tuple[MXHost, ...], used: list[float]) -> None:
        expires = min(used, default=0.0)
        if self._cache_size <= 0 or expires <= self._reactor.seconds():
            return
        self._hosts.pop(domain.lower(), None)
        while len(self._hosts) >= self._cache_size:
            del self._hosts[next(iter(self._hosts))]
        self._hosts[domain.lower()] = (expires, hosts)

    async def _resolve(self, domain: str) -> tuple[MXHost, ...]:
        used: list[float] = []  # when each answer this result is built from runs out
        hosts = await self._lookup(domain, used)
        self._remember(domain, hosts, used)
        return hosts

    async def _lookup(self, domain: str, used: list[float]) -> tuple[MXHost, ...]:
        try:
            qname = _query_name(domain)
        except _Unencodable as e:
            raise UnencodableDomain(
                domain, f"domain {domain!r} cannot be looked up in DNS: {e}"
            ) from None
        try:
            records = await self._ask(qname, dns.MX, used)
        except defer.CancelledError:
            raise
        except dnserror.DNSNameError:
            raise NoSuchDomain(domain, f"domain {domain} does not exist (NXDOMAIN)") from None
        except Exception as e:
            raise TemporaryDNSError(
                domain, f"MX lookup for {domain} failed: {_describe(e)}"
            ) from None

        if any(_name(mx.name) == "" for mx in records):
            raise NullMX(domain, f"domain {domain} accepts no mail (null MX, RFC 7505)")
        if records:
            candidates = self._order(
                [(mx.preference, _name(mx.name)) for mx in records])[:MAX_MX_HOSTS]
        else:
            candidates = [(0, domain)]

        found = await defer.gatherResults(
            [defer.ensureDeferred(self._addresses(domain, name, used))
             for _pref, name in candidates],
            consumeErrors=True,
        )
        hosts = []
        problems = []
        for (preference, name), (addresses, problem) in zip(candidates, found, strict=True):
            if addresses:
                hosts.append(MXHost(name=name, preference=preference, addresses=addresses))
            elif problem:
                problems.append(f"{name}: {problem}")
        if not hosts:
            detail = f" ({'; '.join(problems)})" if problems else ""
            what = "any MX" if records else "the implicit MX"
            raise NoMXAddresses(domain, f"no addresses for {what} of {domain}{detail}")
        return tuple(hosts)

    async def _ask(self, qname: bytes, rtype: int, used: list[float]) -> list[Any]:
        """
        The records of type ``rtype`` (``dns.MX``, ``dns.A`` or ``dns.AAAA``) for ``qname``.

        Follows aliases the answer leaves unresolved, up to :data:`MAX_CNAME_HOPS` queries.
        Appends to ``used`` when each answer it read runs out (now, for one not cached).
        """
        lookup = getattr(self._resolver, _LOOKUPS[rtype])
        for _hop in range(MAX_CNAME_HOPS):
            key = (qname.lower(), rtype)
            answers = self._cache.get(key)
            if answers is None:
                answers, authority, _additional = await lookup(qname, timeout=self._timeout)
                self._cache.put(key, answers, lifetime(answers, authority))
            expires = self._cache.expires(key)
            used.append(self._reactor.seconds() if expires is None else expires)
            records = _records(answers, rtype)
            target = _alias_target(answers, qname)
            if records or target is None:
                return records
            qname = target
        return []

    def _order(self, records: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Sort by preference, shuffle within each preference, drop repeated names."""
        ordered: list[tuple[int, str]] = []
        seen: set[str] = set()
        records = sorted(records, key=lambda r: r[0])
        for _preference, group in groupby(records, key=lambda r: r[0]):
            same = list(group)
            self._random.shuffle(same)
            for preference, name in same:
                if name.lower() not in seen:
                    seen.add(name.lower())
                    ordered.append((preference, name))
        return ordered

    async def _addresses(
        self, domain: str, name: str, used: list[float]
    ) -> tuple[tuple[str, ...], str | None]:
        """
        The IPv4 then IPv6 addresses of one host, and what went wrong if there are none.

        A name that does not exist or has no address records simply yields nothing; other
        failures are reported so that the final reason can say why. A name DNS cannot
        carry (a raw non-ASCII byte in the MX record, say) is skipped and logged: one
        broken MX record must not stop mail that the domain's other MXes would take.
        """
        try:
            qname = _query_name(name)
        except _Unencodable as e:
            reason = f"MX name cannot be encoded for DNS: {e}"
            _log.warn(
                "skipping MX {mx!r} of {domain}: {reason}",
                hatwist_event=MX_SKIPPED_EVENT,
                domain=domain,
                mx=name,
                reason=reason,
            )
            return (), reason
        results = await defer.DeferredList(
            [
                defer.ensureDeferred(self._ask(qname, dns.A, used)),
                defer.ensureDeferred(self._ask(qname, dns.AAAA, used)),
            ],
            consumeErrors=True,
        )
        addresses: list[str] = []
        problems: list[str] = []
        for (ok, result), rtype, label in zip(
            results, (dns.A, dns.AAAA), ("A", "AAAA"), strict=True
        ):
            if ok:
                for record in result:
                    text = record.dottedQuad() if rtype == dns.A else _ipv6(record)
                    if text not in addresses:
                        addresses.append(text)
            else:
                used.append(self._reactor.seconds())  # a failure is never reused
                if not result.check(dnserror.DNSNameError):
                    problems.append(f"{label} lookup failed: {_describe(result.value)}")
        return tuple(addresses), ("; ".join(problems) or None)


def _ipv6(record: dns.Record_AAAA) -> str:
    """The canonical (compressed) text form of an AAAA record's address."""
    return socket.inet_ntop(socket.AF_INET6, record.address)


_DESCRIPTIONS: tuple[tuple[type[BaseException], str], ...] = (
    (dnserror.DNSServerError, "SERVFAIL"),
    (dnserror.DNSQueryRefusedError, "REFUSED"),
    (dnserror.DNSFormatError, "FORMERR"),
    (dnserror.DNSNotImplementedError, "NOTIMP"),
    (dnserror.DNSNameError, "NXDOMAIN"),
    (defer.TimeoutError, "timed out"),
)


def _describe(error: BaseException) -> str:
    """A short, log-friendly name for a resolver failure."""
    for kind, text in _DESCRIPTIONS:
        if isinstance(error, kind):
            return text
    return f"{type(error).__name__}: {error}"
