"""An in-process authoritative DNS server backed by a dict (tests: tests.rig.test_rig).

MX resolution is part of what hatwist does, so tests resolve through real DNS messages
on a real socket rather than a stub resolver: ``twisted.names`` serves the records a test
put in, over UDP and TCP on 127.0.0.1. It is authoritative for the whole tree, so every
name nobody added is NXDOMAIN; a name can also be made to answer SERVFAIL, or nothing.

    dns = await DNSServer.start(reactor)
    dns.add_mx("example.test", [(10, "mx1.example.test")])
    dns.add_a("mx1.example.test", "127.0.0.20")
    resolver = client.Resolver(servers=[dns.address])
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from twisted.names import authority, common, dns, server

#: TTL of records added without one.
DEFAULT_TTL = 60


def _key(name: str | bytes) -> bytes:
    if isinstance(name, str):
        name = name.rstrip(".").encode("idna") if name.rstrip(".") else b""
    return name.rstrip(b".").lower()


@attrs.frozen
class DNSQuery:
    """One question the server was asked: lower-case name and type (``dns.MX`` ...)."""

    name: str
    type: int
    protocol: str  # "udp" or "tcp"


class _DictAuthority(authority.FileAuthority):
    """A FileAuthority whose records are whatever the owning DNSServer says right now."""

    def __init__(self, records: dict[bytes, list]) -> None:
        # FileAuthority.__init__ wants a file to load; the records dict is shared instead.
        self.records = records
        self.soa = (
            b"",
            dns.Record_SOA(
                mname=b"ns.test",
                rname=b"hostmaster.test",
                serial=1,
                refresh=3600,
                retry=600,
                expire=DEFAULT_TTL,
                minimum=DEFAULT_TTL,
                ttl=DEFAULT_TTL,
            ),
        )
        common.ResolverBase.__init__(self)
        self._cache = {}


class _Factory(server.DNSServerFactory):
    def __init__(self, owner: DNSServer) -> None:
        super().__init__(authorities=[owner._authority])
        self.owner = owner

    def handleQuery(self, message, protocol, address):
        query = message.queries[0]
        name = _key(query.name.name)
        transport = "udp" if address is not None else "tcp"
        self.owner.queries.append(DNSQuery(name.decode("ascii"), query.type, transport))
        if name in self.owner._blackholed:
            return None
        if name in self.owner._servfail:
            response = self._responseFromMessage(message=message, rCode=dns.ESERVER)
            self.sendReply(protocol, response, address)
            return None
        return super().handleQuery(message, protocol, address)


class DNSServer:
    """Authoritative DNS on 127.0.0.1 (UDP and TCP, one port). Build it with :meth:`start`.

    Records are answered as soon as they are added; :attr:`queries` lists every question
    asked, so a test can also assert what was (not) looked up.
    """

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._records: dict[bytes, list] = {}
        self._servfail: set[bytes] = set()
        self._blackholed: set[bytes] = set()
        self._authority = _DictAuthority(self._records)
        self.queries: list[DNSQuery] = []
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._listeners: list = []
        self._factory = _Factory(self)

    @classmethod
    def start(cls, reactor, host: str = "127.0.0.1") -> defer.Deferred[DNSServer]:
        """Listen on a free port at ``host`` for both UDP and TCP."""
        owner = cls(reactor)
        # UDP and TCP share one port number: take a free TCP port, then UDP on the same.
        for _ in range(20):
            tcp = reactor.listenTCP(0, owner._factory, interface=host)
            port = tcp.getHost().port
            try:
                udp = reactor.listenUDP(
                    port, dns.DNSDatagramProtocol(owner._factory), interface=host
                )
            except Exception:
                tcp.stopListening()
                continue
            owner._listeners = [udp, tcp]
            owner.address = (host, port)
            return defer.succeed(owner)
        raise RuntimeError("no port free for both UDP and TCP")

    def add_record(self, name: str, record, ttl: int = DEFAULT_TTL) -> None:
        """Add any ``twisted.names.dns.Record_*`` under ``name``."""
        record.ttl = ttl
        self._records.setdefault(_key(name), []).append(record)

    def add_mx(self, name: str, exchanges: list[tuple[int, str]], ttl: int = DEFAULT_TTL):
        """MX records ``[(preference, exchange)]``; ``[(0, ".")]`` is a null MX (RFC 7505)."""
        for preference, exchange in exchanges:
            self.add_record(name, dns.Record_MX(preference, _key(exchange)), ttl)

    def add_a(self, name: str, ip: str, ttl: int = DEFAULT_TTL) -> None:
        self.add_record(name, dns.Record_A(ip), ttl)

    def add_aaaa(self, name: str, ip: str, ttl: int = DEFAULT_TTL) -> None:
        self.add_record(name, dns.Record_AAAA(ip), ttl)

    def add_cname(self, name: str, target: str, ttl: int = DEFAULT_TTL) -> None:
        self.add_record(name, dns.Record_CNAME(_key(target)), ttl)

    def remove(self, name: str) -> None:
        """Forget every record of ``name`` and any SERVFAIL/blackhole on it (now NXDOMAIN)."""
        key = _key(name)
        self._records.pop(key, None)
        self._servfail.discard(key)
        self._blackholed.discard(key)

    def servfail(self, name: str) -> None:
        """Answer every question about ``name`` with SERVFAIL."""
        self._servfail.add(_key(name))

    def blackhole(self, name: str) -> None:
        """Never answer questions about ``name`` (the resolver times out)."""
        self._blackholed.add(_key(name))

    @defer.inlineCallbacks
    def stop(self):
        """Stop both listeners and close open TCP connections."""
        listeners, self._listeners = self._listeners, []
        for proto in list(self._factory.connections):
            proto.transport.abortConnection()
        for listener in listeners:
            yield listener.stopListening()
        return None
