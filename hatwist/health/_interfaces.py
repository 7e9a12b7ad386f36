# -*- test-case-name: tests.health.test_checker -*-
"""
The seam between the checker (when to check) and a probe (how to check).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import zope.interface


@attrs.frozen
class SourceResults:
    """
    A check that tried each source address a server is used with, source by source.

    Kept per source because one source address gone bad behind HAProxy (removed from
    the proxy host, no return route) must stop only the bindings that send from it.
    """

    results: tuple[tuple[str, str | None], ...] = attrs.field(
        converter=lambda pairs: tuple(dict(pairs).items())
    )
    """(source, None when it passed or the reason it failed), in the order tried."""

    def as_dict(self) -> Mapping[str, str | None]:
        return dict(self.results)


class IHealthProbe(zope.interface.Interface):
    """
    One way of finding out whether a proxy server can carry mail.
    """

    def check(server: object) -> object:
        """
        Probe C{server} once.

        @return: a L{twisted.internet.defer.Deferred} that fires with C{None}
            when the server is fit, or fails with the reason it is not
            (preferably a L{hatwist.health.ProbeError} whose message reads well
            in a log line); a probe that tries several source addresses fires
            with a L{SourceResults} instead. Cancelling it must abandon the
            probe, including any half-open connection; a probe may then still
            fire with what it found so far (the checker cancels at its timeout).
        """
