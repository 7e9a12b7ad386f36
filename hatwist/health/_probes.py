# -*- test-case-name: tests.health.test_probes -*-
"""
The two ways of probing a proxy server: a plain TCP connect, or an SMTP banner
fetched through the server with a real PROXY v2 header.

Every probe owns the connection it makes: at its deadline, or when its Deferred
is cancelled, it cancels a connect still in progress or aborts a connection
already made, so no half-open socket outlives the check (FIELD-NOTES §4).

Neither probe ever sends a LOCAL header: HAProxy would keep the real addresses
and connect back to its own listener (FIELD-NOTES §3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from hatwist.config import HealthCheckMode, HealthSettings, ServerAddress
from hatwist.config.values import ip_version, probe_target
from hatwist.endpoint import DestinationUnresolvable, HAProxyClientEndpoint, tcp_endpoint

from ._errors import BadBanner, CheckTimedOut, NoBanner, ProbeError, describe
from ._interfaces import IHealthProbe, SourceResults

#: The longest first reply line we wait for; RFC 5321 allows 512 octets.
MAX_BANNER_LINE = 1000

#: How much of an unexpected reply line a failure reason quotes.
QUOTED_REPLY = 80

EndpointFor = Callable[[Any], IStreamClientEndpoint]


def direct_endpoint(reactor: IReactorTCP, server: Any) -> IStreamClientEndpoint:
    """
    A fresh endpoint reaching ``server.host``:``server.port``: making one per check is
    what re-resolves a host name at each check (see :func:`hatwist.endpoint.tcp_endpoint`).
    """
    return tcp_endpoint(reactor, server.host, server.port)


class _ProbeProtocol(Protocol):
    """
    A protocol that decides its verdict, closes, and reports on ``finished``.

    ``finished`` fires once the connection is gone: with None if the verdict
    was good, with the verdict's error otherwise, or with L{lost_early} if the
    peer closed before a verdict.
    """

    def __init__(self) -> None:
        self.finished: Deferred[None] = Deferred()
        self._verdict: Exception | None = None
        self._decided = False

    def close(self, error: Exception | None = None) -> None:
        if not self._decided:
            self._decided = True
            self._verdict = error
            self.transport.loseConnection()

    def lost_early(self) -> Exception:
        return ProbeError("connection closed before the check finished")

    def connectionLost(self, reason: Failure) -> None:
        if not self._decided:
            self._decided = True
            self._verdict = self.lost_early()
        if self._verdict is None:
            self.finished.callback(None)
        else:
            self.finished.errback(Failure(self._verdict))


class _ConnectOnly(_ProbeProtocol):
    def connectionMade(self) -> None:
        self.close()


class _BannerReader(_ProbeProtocol):
    """
    Wait for the first reply line; pass on ``220``, then say QUIT and close.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        if self._decided:
            return
        self._buffer += data
        line, newline, _ = self._buffer.partition(b"\n")
        if not newline:
            if len(self._buffer) > MAX_BANNER_LINE:
                self.close(BadBanner(f"no end of line in the first {MAX_BANNER_LINE} bytes"))
            return
        self.transport.write(b"QUIT\r\n")
        if line.startswith(b"220"):
            self.close()
        else:
            text = line.rstrip(b"\r").decode("ascii", "replace")[:QUOTED_REPLY]
            self.close(BadBanner(f"expected a 220 banner, got {text!r}"))

    def lost_early(self) -> Exception:
        return NoBanner(
            "connection closed before the 220 banner (the source address may be "
            "unusable behind the proxy, or the target unreachable from it)"
        )


class _OneProtocol(Factory):
    """Hands out one given protocol, quietly: ``connectProtocol``'s factory logs
    "Starting factory" and "Stopping factory" for every check, which was half of what an
    idle relay logged."""

    noisy = False

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self._protocol


class _Attempt:
    """
    One probe connection, finished or abandoned as a whole.

    ``result`` fires with the protocol's verdict; at ``timeout`` it fails with
    L{CheckTimedOut}, and both then and on cancellation the connect in progress
    is cancelled or the connection made is aborted.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        make_endpoint: Callable[[], IStreamClientEndpoint],
        protocol: _ProbeProtocol,
        timeout: float,
        what: str,
    ) -> None:
        self.result: Deferred[None] = Deferred(lambda _: self._abandon())
        self._protocol = protocol
        self._timeout = timeout
        self._what = what
        self._timed_out: CheckTimedOut | None = None
        self._deadline = reactor.callLater(timeout, self._time_out)
        self._connecting: Deferred[Any] | None = None
        connecting = maybeDeferred(lambda: make_endpoint().connect(_OneProtocol(protocol)))
        if not connecting.called:
            self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, protocol: _ProbeProtocol) -> None:
        self._connecting = None
        protocol.finished.addBoth(self._finish)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        self._finish(failure)

    def _finish(self, outcome: object) -> None:
        if self._deadline.active():
            self._deadline.cancel()
        if self.result.called:
            return
        if self._timed_out is not None:
            outcome = Failure(self._timed_out)
        if isinstance(outcome, Failure):
            self.result.errback(outcome)
        else:
            self.result.callback(None)

    def expire(self) -> None:
        """
        Time is up for the whole check: a pending attempt fails as timed out now.
        """
        if not self.result.called:
            self._time_out()

    def _time_out(self) -> None:
        # Abandon before failing, so whoever waits on ``result`` finds the connection
        # already gone; the cancelled connect's own error gives way to the timeout.
        self._timed_out = CheckTimedOut(self._timeout, self._what)
        self._abandon()
        self._finish(None)

    def _abandon(self) -> None:
        if self._deadline.active():
            self._deadline.cancel()
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        elif self._protocol.transport is not None:
            self._protocol.transport.abortConnection()


@implementer(IHealthProbe)
class ConnectProbe:
    """
    The ``connect`` health check mode: a TCP connect within ``timeout``, then close.

    Cheap and harmless to HAProxy (which logs nothing for it with
    ``option dontlognull``), but it only proves the proxy's port is open.
    """

    def __init__(
        self, reactor: Any, *, timeout: float, endpoint_for: EndpointFor | None = None
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._endpoint_for = endpoint_for or (lambda server: direct_endpoint(reactor, server))

    def check(self, server: Any) -> Deferred[None]:
        return _Attempt(
            self._reactor,
            lambda: self._endpoint_for(server),
            _ConnectOnly(),
            self._timeout,
            f"connect to {server}",
        ).result


@implementer(IHealthProbe)
class SMTPBannerProbe:
    """
    The ``smtp`` health check mode: prove each source address works behind the proxy.

    For every source address the server is used with, connect to the server, send a
    PROXY v2 header from that source to the target of the source's address family, and
    require the target's ``220`` banner within ``timeout``; then QUIT and close. The
    sources are probed at once, and the verdict is a L{SourceResults}, so the registry
    can stop using one bad (server, source) path and keep the others. Cancelling the
    check (the checker does at its timeout) fails the sources still waiting as timed
    out and still reports the ones that answered.

    Targets per family: ``ipv6_target``, when given, proves IPv6 sources and ``target``
    then proves IPv4 ones only; without it ``target`` proves the sources of its own
    family (an IP literal) or of both (a host name, resolved per source). One target
    cannot prove both families when its name has no address of one of them, so a
    source whose family has no target -- none configured, or a host name without such
    an address at check time -- is judged by a plain TCP connect to the server instead:
    its path is never unplumbed for a DNS reason. That connect runs alongside the banner
    attempts (one per check, only when a source may need it), so a slow banner of one
    source cannot starve it of time; HAProxy's ``option dontlognull`` keeps it out of
    the proxy's log, as for the connect mode.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        timeout: float,
        target: ServerAddress | None,
        sources_for: Callable[[Any], Sequence[str]],
        endpoint_for: EndpointFor | None = None,
        ipv6_target: ServerAddress | None = None,
    ) -> None:
        if target is None and ipv6_target is None:
            raise ValueError("the smtp probe needs a target for at least one family")
        self._reactor = reactor
        self._timeout = timeout
        self._target = target
        self._ipv6_target = ipv6_target
        self._sources_for = sources_for
        self._endpoint_for = endpoint_for or (lambda server: direct_endpoint(reactor, server))

    def target_for(self, family: int) -> ServerAddress | None:
        """The target that proves sources of IPv``family``; None: judged by a connect."""
        return probe_target(self._target, self._ipv6_target, family)

    def check(self, server: Any) -> Deferred[SourceResults]:
        try:
            sources = list(dict.fromkeys(self._sources_for(server)))
            if not sources:
                raise ProbeError(f"no source address is used with {server}, nothing to probe")
        except Exception:
            return fail()
        targets = [self.target_for(ip_version(source) or 4) for source in sources]
        attempts = [
            self._attempt(server, source, target)
            for source, target in zip(sources, targets, strict=True)
            if target is not None
        ]
        # One plain connect stands in for every source without a target, and for any
        # whose host-name target turns out to have no address of its family.
        connect = None
        if any(target is None or target.ip_version is None for target in targets):
            connect = _Attempt(
                self._reactor,
                lambda: self._endpoint_for(server),
                _ConnectOnly(),
                self._timeout,
                f"connect to {server}",
            )
        everything = attempts + ([connect] if connect is not None else [])

        def time_up(_: Deferred[SourceResults]) -> None:
            for attempt in everything:
                attempt.expire()  # the last one fires ``verdict`` through ``checked``

        verdict: Deferred[SourceResults] = Deferred(time_up)
        checked: Deferred[Any] = DeferredList(
            [a.result for a in everything], consumeErrors=True
        )
        checked.addCallback(self._verdict, sources, targets, connect is not None)
        checked.chainDeferred(verdict)
        return verdict

    def _attempt(self, server: Any, source: str, target: ServerAddress) -> _Attempt:
        def make_endpoint() -> IStreamClientEndpoint:
            return HAProxyClientEndpoint(
                self._reactor,
                self._endpoint_for(server),
                source=(source, 0),
                destination=(target.host, target.port),
                version=2,
            )

        return _Attempt(
            self._reactor,
            make_endpoint,
            _BannerReader(),
            self._timeout,
            f"waiting for the banner of {target}",
        )

    def _verdict(
        self,
        results: list[tuple[bool, Any]],
        sources: list[str],
        targets: list[ServerAddress | None],
        connected: bool,
    ) -> SourceResults:
        outcomes = iter(results)
        connect = results[-1] if connected else None
        verdicts = []
        for source, target in zip(sources, targets, strict=True):
            family = ip_version(source) or 4
            if target is None:
                why = f"no IPv{family} health check target, judged by a TCP connect"
                verdicts.append((source, _connect_verdict(connect, why)))
                continue
            ok, outcome = next(outcomes)
            if not ok and outcome.check(DestinationUnresolvable):
                why = f"{target.host} has no IPv{family} address, judged by a TCP connect"
                verdicts.append((source, _connect_verdict(connect, why)))
            else:
                verdicts.append((source, None if ok else describe(outcome.value)))
        return SourceResults(verdicts)


def _connect_verdict(connect: tuple[bool, Any] | None, why: str) -> str | None:
    """A source's result taken from the stand-in connect check: None when it passed."""
    assert connect is not None  # started whenever a source could need it
    ok, outcome = connect
    return None if ok else f"{why}: {describe(outcome.value)}"


def make_probe(
    settings: HealthSettings, *, reactor: Any, sources_for: Callable[[Any], Sequence[str]]
) -> IHealthProbe:
    """
    The probe ``settings.mode`` asks for; ``sources_for`` is usually ``Config.sources_for``.
    """
    if settings.mode is HealthCheckMode.SMTP:
        if settings.target is None and settings.ipv6_target is None:
            raise ValueError(
                "health_check_mode smtp needs a health_check_target or health_check_ipv6_target"
            )
        return SMTPBannerProbe(
            reactor,
            timeout=settings.timeout,
            target=settings.target,
            ipv6_target=settings.ipv6_target,
            sources_for=sources_for,
        )
    return ConnectProbe(reactor, timeout=settings.timeout)
