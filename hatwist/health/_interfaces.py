# -*- test-case-name: tests.health.test_checker -*-
"""
The seam between the checker (when to check) and a probe (how to check).
"""

from __future__ import annotations

import zope.interface


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
            in a log line). Cancelling it must abandon the probe, including any
            half-open connection.
        """
