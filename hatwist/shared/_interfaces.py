# -*- test-case-name: tests.shared.test_local -*-
"""What the scheduler asks of its limits, wherever they are kept."""

from __future__ import annotations

from zope.interface import Interface


class ILimits(Interface):
    """``max_connections`` and ``outbound_throttle_messages`` of every queue.

    :class:`~hatwist.shared.LocalLimits` keeps them in this process (hatwist's behaviour
    without ``redis_url``); :class:`~hatwist.shared.RedisLimits` shares them with every
    process that points at the same Redis.
    """

    def start(key, throttle, max_connections, now):
        """May one attempt of ``key`` start at ``now`` (the reactor's seconds)?

        One atomic question for both limits: when granted, the start is recorded
        in the throttle window and a slot is taken, together.  The limits are
        passed at every question, so a config reload applies at the next one.

        :returns: a :class:`~hatwist.shared.Decision`, or a Deferred firing with one
            (never failing: a limit store that cannot answer answers locally).
        """

    def finish(lease):
        """The attempt holding ``lease`` ended: its slot is free again."""

    def unstart(lease):
        """The attempt holding ``lease`` never reached an MX (held for want of a
        plumbed proxy): its start leaves the throttle window.  Call before
        :meth:`finish`."""

    def next_start(key, throttle, now):
        """When one more start of ``key`` may come, as far as known here (``now``
        when at once or unknown): what status pages show for a throttled queue."""
