"""Tests for hatwist.mx: MX resolution against the rig's in-process DNS server on loopback."""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.names import dns
from twisted.names import error as dnserror

from hatwist import mx

#: Every awaited Deferred gets this deadline, so a broken test fails instead of hanging.
DEADLINE = 10.0


@pytest.fixture
def zone(dns_server):
    """The rig's DNS server and its (host, port)."""
    return dns_server, dns_server.address


def _resolver(address, *, timeout=(1, 3), rng=None) -> mx.MXResolver:
    from twisted.internet import reactor

    return mx.MXResolver(
        mx.build_resolver(address, reactor=reactor, timeout=timeout),
        reactor=reactor,
        timeout=timeout,
        rng=rng or random.Random(1),
    )


def _resolve(resolver: mx.MXResolver, domain: str) -> defer.Deferred:
    from twisted.internet import reactor

    return resolver.resolve(domain).addTimeout(DEADLINE, reactor)


def _failure_of(d: defer.Deferred) -> defer.Deferred:
    """Fire with the exception ``d`` failed with (or fail the test if it succeeded)."""

    def succeeded(result):
        pytest.fail(f"expected a failure, got {result!r}")

    return d.addCallbacks(succeeded, lambda f: f.value)


def _mx(pref: int, name: str) -> dns.Record_MX:
    return dns.Record_MX(pref, name.encode())


@pytest_twisted.ensureDeferred
async def test_hosts_sorted_by_preference_with_both_address_families(zone):
    z, address = zone
    z.add_mx("example.test", [(20, "mx2.example.test"), (10, "mx1.example.test")])
    z.add_a("mx1.example.test", "127.0.0.20")
    z.add_aaaa("mx1.example.test", "fd00::20")
    z.add_a("mx2.example.test", "127.0.0.21")
    z.add_a("mx2.example.test", "127.0.0.22")
    hosts = await _resolve(_resolver(address), "example.test")
    assert hosts == (
        mx.MXHost("mx1.example.test", 10, ("127.0.0.20", "fd00::20")),
        mx.MXHost("mx2.example.test", 20, ("127.0.0.21", "127.0.0.22")),
    )


@pytest_twisted.ensureDeferred
async def test_equal_preferences_are_shuffled_and_never_cross_preferences(zone):
    z, address = zone
    z.add_mx(
        "example.test",
        [
            (10, "a.example.test"),
            (10, "b.example.test"),
            (10, "c.example.test"),
            (5, "first.example.test"),
            (30, "last.example.test"),
        ],
    )
    for n, name in enumerate(["a", "b", "c", "first", "last"]):
        z.add_a(f"{name}.example.test", f"127.0.1.{n + 1}")
    orders = set()
    for seed in range(12):
        hosts = await _resolve(_resolver(address, rng=random.Random(seed)), "example.test")
        names = [h.name.split(".")[0] for h in hosts]
        assert names[0] == "first" and names[-1] == "last"
        assert sorted(names[1:4]) == ["a", "b", "c"]
        orders.add(tuple(names))
    assert len(orders) > 1


@pytest_twisted.ensureDeferred
async def test_no_mx_records_means_the_domain_itself(zone):
    z, address = zone
    z.add_a("plain.example.test", "127.0.0.20")
    hosts = await _resolve(_resolver(address), "plain.example.test")
    assert hosts == (mx.MXHost("plain.example.test", 0, ("127.0.0.20",)),)


@pytest_twisted.ensureDeferred
async def test_null_mx_is_permanent_556_5_1_10(zone):
    z, address = zone
    z.add_mx("nomail.example.test", [(0, ".")])
    z.add_a("nomail.example.test", "127.0.0.20")
    error = await _failure_of(_resolve(_resolver(address), "nomail.example.test"))
    assert isinstance(error, mx.NullMX)
    assert (error.temporary, error.code, error.status) == (False, 556, "5.1.10")
    assert "nomail.example.test" in error.reason


@pytest_twisted.ensureDeferred
async def test_nxdomain_is_permanent(zone):
    _z, address = zone
    error = await _failure_of(_resolve(_resolver(address), "missing.example.test"))
    assert isinstance(error, mx.NoSuchDomain)
    assert error.temporary is False
    assert error.status.startswith("5.")
    assert "missing.example.test" in error.reason


@pytest_twisted.ensureDeferred
async def test_servfail_is_temporary(zone):
    z, address = zone
    z.servfail("broken.example.test")
    error = await _failure_of(_resolve(_resolver(address), "broken.example.test"))
    assert isinstance(error, mx.TemporaryDNSError)
    assert error.temporary is True
    assert error.status.startswith("4.")
    assert "broken.example.test" in error.reason and "SERVFAIL" in error.reason


@pytest_twisted.ensureDeferred
async def test_dns_timeout_is_temporary(zone):
    z, address = zone
    z.blackhole("silent.example.test")
    resolver = _resolver(address, timeout=(0.1, 0.1))
    error = await _failure_of(_resolve(resolver, "silent.example.test"))
    assert isinstance(error, mx.TemporaryDNSError)
    assert "silent.example.test" in error.reason and "timed out" in error.reason


def test_overall_deadline_turns_a_silent_resolver_into_a_temporary_error():
    class Silent:
        def lookupMailExchange(self, name, timeout=None):
            return defer.Deferred()

    clock = task.Clock()
    resolver = mx.MXResolver(Silent(), reactor=clock, timeout=(1, 2))
    failures = []
    resolver.resolve("example.test").addErrback(failures.append)
    clock.advance(2 * 3)
    assert failures == []
    clock.advance(mx.DEADLINE_SLACK)
    [failure] = failures
    assert isinstance(failure.value, mx.TemporaryDNSError)
    assert "example.test" in failure.value.reason
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_host_without_addresses_is_skipped(zone):
    z, address = zone
    z.add_mx("example.test", [(10, "dead.example.test"), (20, "mx.example.test")])
    z.add_record("dead.example.test", dns.Record_TXT(b"no address here"))
    z.add_a("mx.example.test", "127.0.0.20")
    hosts = await _resolve(_resolver(address), "example.test")
    assert [h.name for h in hosts] == ["mx.example.test"]


@pytest_twisted.ensureDeferred
async def test_no_address_for_any_mx_is_temporary_and_names_the_domain(zone):
    z, address = zone
    z.add_mx("example.test", [(10, "gone.example.test"), (20, "other.invalid")])
    error = await _failure_of(_resolve(_resolver(address), "example.test"))
    assert isinstance(error, mx.NoMXAddresses)
    assert error.temporary is True
    assert "no addresses for any MX of example.test" in error.reason


@pytest_twisted.ensureDeferred
async def test_address_lookup_failures_are_named_in_the_reason(zone):
    z, address = zone
    z.add_mx("example.test", [(10, "mx.example.test")])
    z.servfail("mx.example.test")
    error = await _failure_of(_resolve(_resolver(address), "example.test"))
    assert isinstance(error, mx.NoMXAddresses)
    assert "mx.example.test" in error.reason and "SERVFAIL" in error.reason


@pytest_twisted.ensureDeferred
async def test_aliases_are_followed_for_mx_and_addresses(zone):
    z, address = zone
    z.add_cname("alias.example.test", "real.example.test")
    z.add_mx("real.example.test", [(10, "mxalias.example.test")])
    z.add_cname("mxalias.example.test", "mx.example.test")
    z.add_a("mx.example.test", "127.0.0.20")
    z.add_aaaa("mx.example.test", "fd00::20")
    hosts = await _resolve(_resolver(address), "alias.example.test")
    assert hosts == (mx.MXHost("mxalias.example.test", 10, ("127.0.0.20", "fd00::20")),)


@pytest_twisted.ensureDeferred
async def test_chased_answers_use_only_records_of_the_asked_type():
    """A recursive server's answer holds the CNAME chain, then the records asked for."""

    def rr(name: bytes, payload) -> dns.RRHeader:
        return dns.RRHeader(name, payload.TYPE, dns.IN, 60, payload)

    class Recursive:
        def lookupMailExchange(self, name, timeout=None):
            return defer.succeed(
                (
                    [
                        rr(name, dns.Record_CNAME(b"target.test")),
                        rr(b"target.test", _mx(5, "mx.test")),
                    ],
                    [],
                    [],
                )
            )

        def lookupAddress(self, name, timeout=None):
            return defer.succeed(([rr(name, dns.Record_A("127.0.0.20"))], [], []))

        def lookupIPV6Address(self, name, timeout=None):
            return defer.fail(dnserror.DNSNameError(name))

    resolver = mx.MXResolver(Recursive(), reactor=task.Clock())
    hosts = await resolver.resolve("alias.test")
    assert hosts == (mx.MXHost("mx.test", 5, ("127.0.0.20",)),)


def test_configured_resolver_reads_no_system_files_and_leaves_no_timer():
    clock = task.Clock()
    resolver = mx.build_resolver(("127.0.0.1", 5353), reactor=clock)
    assert resolver.servers == [("127.0.0.1", 5353)]
    assert resolver.resolv is None
    assert clock.getDelayedCalls() == []


def test_system_resolver_timer_is_cancelled_by_close():
    clock = task.Clock()
    resolver = mx.MXResolver(mx.build_resolver(None, reactor=clock), reactor=clock)
    assert len(clock.getDelayedCalls()) == 1
    resolver.close()
    assert clock.getDelayedCalls() == []


def test_errors_render_as_an_smtp_reply():
    error = mx.NullMX("example.test", "domain example.test accepts no mail")
    assert str(error) == "556 5.1.10 domain example.test accepts no mail"
    assert isinstance(error, mx.MXError)


class _CountingResolver:
    """An ``IResolver`` with fixed answers that counts the queries it is asked."""

    def __init__(self, *, ttl: int = 300, negative_ttl: int = 60) -> None:
        self.asked: list[tuple[bytes, str]] = []
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.fail_next = False

    def _answer(self, name, kind, payload):
        self.asked.append((name, kind))
        if self.fail_next:
            self.fail_next = False
            return defer.fail(dnserror.DNSServerError(name))
        if payload is None:
            soa = dns.Record_SOA(minimum=self.negative_ttl, ttl=3600)
            return defer.succeed(([], [dns.RRHeader(b"test", dns.SOA, dns.IN, 3600, soa)], []))
        answer = dns.RRHeader(name, payload.TYPE, dns.IN, self.ttl, payload)
        return defer.succeed(([answer], [], []))

    def lookupMailExchange(self, name, timeout=None):
        return self._answer(name, "MX", _mx(10, "mx.example.test"))

    def lookupAddress(self, name, timeout=None):
        return self._answer(name, "A", dns.Record_A("127.0.0.20"))

    def lookupIPV6Address(self, name, timeout=None):
        return self._answer(name, "AAAA", None)  # NODATA, with the zone's SOA


def _kinds(counting: _CountingResolver) -> list[str]:
    kinds = [kind for _name, kind in counting.asked]
    counting.asked.clear()
    return kinds


@pytest_twisted.ensureDeferred
async def test_answers_are_reused_until_their_ttl_runs_out():
    clock = task.Clock()
    counting = _CountingResolver(ttl=300, negative_ttl=60)
    resolver = mx.MXResolver(counting, reactor=clock)
    expected = (mx.MXHost("mx.example.test", 10, ("127.0.0.20",)),)
    assert await resolver.resolve("example.test") == expected
    assert sorted(_kinds(counting)) == ["A", "AAAA", "MX"]
    assert await resolver.resolve("EXAMPLE.test") == expected
    assert _kinds(counting) == []
    clock.advance(60)  # the negative answer (no AAAA) lives as long as the SOA minimum
    assert await resolver.resolve("example.test") == expected
    assert _kinds(counting) == ["AAAA"]
    clock.advance(240)
    assert await resolver.resolve("example.test") == expected
    assert sorted(_kinds(counting)) == ["A", "AAAA", "MX"]


@pytest_twisted.ensureDeferred
async def test_zero_ttl_answers_and_failures_are_never_reused():
    clock = task.Clock()
    counting = _CountingResolver(ttl=0, negative_ttl=0)
    resolver = mx.MXResolver(counting, reactor=clock)
    counting.fail_next = True
    error = await _failure_of(resolver.resolve("example.test"))
    assert isinstance(error, mx.TemporaryDNSError)
    await resolver.resolve("example.test")
    await resolver.resolve("example.test")
    assert sorted(_kinds(counting)) == ["A", "A", "AAAA", "AAAA", "MX", "MX", "MX"]


@pytest_twisted.ensureDeferred
async def test_the_answer_cache_is_bounded():
    clock = task.Clock()
    counting = _CountingResolver()
    resolver = mx.MXResolver(counting, reactor=clock, cache_size=4)
    for n in range(10):
        await resolver.resolve(f"d{n}.example.test")
    _kinds(counting)
    await resolver.resolve("d0.example.test")  # long pushed out by the later domains
    assert "MX" in _kinds(counting)


@pytest_twisted.ensureDeferred
async def test_an_mx_name_that_cannot_be_encoded_is_skipped_and_logged(zone):
    """A raw UTF-8 byte in one MX name must not fail the whole domain (issue 12)."""
    from twisted.logger import globalLogPublisher

    z, address = zone
    z.add_record("example.test", dns.Record_MX(10, b"mx\xc3\xa9.example.test"))
    z.add_record("example.test", dns.Record_MX(10, b"mx-" + b"\xc3\xbc" * 40 + b".test"))
    z.add_mx("example.test", [(20, "mx.example.test")])
    z.add_a("mx.example.test", "127.0.0.20")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        hosts = await _resolve(_resolver(address), "example.test")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert hosts == (mx.MXHost("mx.example.test", 20, ("127.0.0.20",)),)
    skipped = [e for e in events if e.get("hatwist_event") == "mx_skipped"]
    assert len(skipped) == 2
    assert all(e["domain"] == "example.test" for e in skipped)
    assert all("cannot be encoded" in e["reason"] for e in skipped)


@pytest_twisted.ensureDeferred
async def test_a_domain_whose_only_mx_cannot_be_encoded_says_so(zone):
    z, address = zone
    z.add_record("example.test", dns.Record_MX(10, b"mx\xc3\xa9.example.test"))
    error = await _failure_of(_resolve(_resolver(address), "example.test"))
    assert isinstance(error, mx.NoMXAddresses)
    assert "cannot be encoded" in error.reason


@pytest.mark.parametrize(
    "domain",
    [
        "ü" * 60 + ".test",  # its IDNA label is over 63 octets
        "a" * 64 + ".test",  # an ASCII label over 63 octets
        ("é" * 20 + ".") * 12 + "test",  # over 253 octets once encoded
        "bad..test",  # an empty label
    ],
    ids=["idna-label-too-long", "ascii-label-too-long", "name-too-long", "empty-label"],
)
@pytest_twisted.ensureDeferred
async def test_a_domain_that_cannot_be_written_in_dns_fails_permanently_and_says_why(
    zone, domain
):
    _z, address = zone
    error = await _failure_of(_resolve(_resolver(address), domain))
    assert isinstance(error, mx.MXError)
    assert error.temporary is False
    assert (error.code, error.status) == (553, "5.1.3")
    assert "cannot be looked up in DNS" in error.reason
    assert error.domain == domain


@pytest_twisted.ensureDeferred
async def test_a_known_domain_is_answered_at_once_until_its_first_ttl_runs_out():
    clock = task.Clock()
    counting = _CountingResolver(ttl=300, negative_ttl=60)
    resolver = mx.MXResolver(counting, reactor=clock)
    first = await resolver.resolve("example.test")
    _kinds(counting)
    again = resolver.resolve("Example.Test")
    assert again.called  # no coroutine, no timeout timer: the answer is known
    assert await again == first and _kinds(counting) == []
    assert clock.getDelayedCalls() == []
    clock.advance(60)  # the no-AAAA answer ran out: the whole answer is built again
    later = resolver.resolve("example.test")
    assert await later == first and _kinds(counting) == ["AAAA"]


class _TwoMX(_CountingResolver):
    def lookupMailExchange(self, name, timeout=None):
        answers = [dns.RRHeader(name, dns.MX, dns.IN, 300, _mx(10, f"mx{i}.example.test"))
                   for i in (1, 2, 3)]
        return defer.succeed((answers, [], []))


@pytest_twisted.ensureDeferred
async def test_known_answers_still_shuffle_equal_preferences():
    resolver = mx.MXResolver(_TwoMX(ttl=300), reactor=task.Clock(), rng=random.Random(3))
    orders = {tuple(h.name for h in await resolver.resolve("example.test")) for _ in range(30)}
    assert len(orders) > 1
    assert all(sorted(order) == ["mx1.example.test", "mx2.example.test", "mx3.example.test"]
               for order in orders)


@pytest_twisted.ensureDeferred
async def test_an_answer_with_a_failed_lookup_is_not_kept_whole():
    clock = task.Clock()
    counting = _CountingResolver(ttl=300, negative_ttl=300)
    resolver = mx.MXResolver(counting, reactor=clock)
    original = counting.lookupIPV6Address
    counting.lookupIPV6Address = lambda name, timeout=None: defer.fail(
        dnserror.DNSServerError(name))
    await resolver.resolve("example.test")
    counting.lookupIPV6Address = original
    _kinds(counting)
    assert await resolver.resolve("example.test")
    assert _kinds(counting) == ["AAAA"]  # the failure is asked again, the rest is cached


class _ManyMX(_CountingResolver):
    def lookupMailExchange(self, name, timeout=None):
        answers = [dns.RRHeader(name, dns.MX, dns.IN, 300, _mx(i, f"mx{i}.example.test"))
                   for i in range(200)]
        return defer.succeed((answers, [], []))


@pytest_twisted.ensureDeferred
async def test_a_domain_with_hundreds_of_mx_hosts_costs_a_bounded_number_of_queries():
    """Issue 11: 1,000 MX addresses were all looked up (two queries each, at once)."""
    counting = _ManyMX()
    hosts = await mx.MXResolver(counting, reactor=task.Clock()).resolve("example.test")
    assert [h.name for h in hosts] == [f"mx{i}.example.test" for i in range(mx.MAX_MX_HOSTS)]
    assert len([k for k in _kinds(counting) if k in ("A", "AAAA")]) == 2 * mx.MAX_MX_HOSTS


@pytest_twisted.ensureDeferred
async def test_known_families_come_from_a_cached_answer_and_ask_nothing(zone):
    """What the choice of a binding_group's binding reads: no query, only the cache."""
    z, address = zone
    z.add_mx("both.test", [(10, "mx1.both.test")])
    z.add_a("mx1.both.test", "127.0.0.20")
    z.add_aaaa("mx1.both.test", "fd00::20")
    z.add_mx("six.test", [(10, "mx1.six.test")])
    z.add_aaaa("mx1.six.test", "fd00::21")
    resolver = _resolver(address)
    assert resolver.known_families("both.test") is None  # never resolved: unknown
    await _resolve(resolver, "both.test")
    await _resolve(resolver, "six.test")
    assert resolver.known_families("BOTH.test") == frozenset({4, 6})
    assert resolver.known_families("six.test") == frozenset({6})


def test_known_families_end_with_the_cached_answer():
    clock = task.Clock()
    resolver = mx.MXResolver(_CountingResolver(ttl=300, negative_ttl=60), reactor=clock)
    resolver.resolve("example.test")
    assert resolver.known_families("example.test") == frozenset({4})
    clock.advance(60)  # the negative AAAA answer runs out first, and the whole answer with it
    assert resolver.known_families("example.test") is None
