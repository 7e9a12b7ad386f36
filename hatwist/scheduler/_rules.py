# -*- test-case-name: tests.test_scheduler -*-
"""
What the current config and proxy health say about one queue.

Asked afresh at every decision, so a config reload or a health change takes
effect at once.  A queue of mail sent to a binding_group (``group:NAME``, see
:func:`hatwist.config.group_route`) runs by the group's own settings (retries,
expiry); which of its bindings takes an attempt, and under whose limits, is
:meth:`Rules.candidates`' answer.  Every question has an answer even when the
config no longer knows the binding (after a reload): accepted mail is then kept
and retried slowly (:data:`FALLBACK_POLICY`), never dropped or bounced at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from hatwist.config import route_group
from hatwist.config.shares import share_count, share_throttle
from hatwist.config.values import Throttle
from hatwist.schedule import RetryPolicy

from ._choice import Chooser
from ._queues import QueueKey

Families = Callable[[str], "frozenset[int] | None"]
"""``domain -> families``: the address families of the domain's MX hosts if known now
(the resolver's cache), else None."""

#: For a message whose binding vanished from the config.
FALLBACK_POLICY = RetryPolicy(retry_interval=15 * 60, message_expiration=5 * 24 * 3600)
FALLBACK_MAX_CONNECTIONS = 1


class Rules:
    """
    :param config_provider: returns the current ``Config``.
    :param registry: the proxy :class:`hatwist.health.ServerRegistry`.
    :param families: what is known of a domain's MX address families (see
        :data:`Families`), for the choice of a group's binding.
    """

    def __init__(self, config_provider: Callable[[], Any], registry: Any,
                 families: Families | None = None) -> None:  # fmt: skip
        self._config = config_provider
        self._registry = registry
        self._families: Families = families or (lambda domain: None)
        self._chooser = Chooser()

    def settings(self, key: QueueKey) -> Any:
        """The delivery settings of (binding, domain) -- a group queue's are the group's
        own -- or None if unknown now."""
        try:
            return self._config().route(key[0]).settings_for(key[1])
        except Exception:
            return None

    # -- binding groups ------------------------------------------------------

    def members(self, key: QueueKey) -> tuple[str, ...] | None:
        """The bindings of a group queue's group (empty if the group is gone), or None
        for a binding's queue."""
        group = route_group(key[0])
        if group is None:
            return None
        try:
            return self._config().group(group).members
        except Exception:
            return ()

    def usable_members(self, key: QueueKey) -> list[tuple[str, int]]:
        """``(binding, weight)`` of the group queue's bindings that could take an
        attempt now: weight above 0 and a plumbed path for the MX's address family
        (any family the binding has a source for while the MX is not known yet)."""
        members = self.members(key) or ()
        families = self._families(key[1])
        usable = []
        for name in members:
            settings = self.settings((name, key[1]))
            if settings is None or settings.binding_weight <= 0:
                continue
            if self._has_path(settings, families):
                usable.append((name, settings.binding_weight))
        return usable

    def candidates(self, key: QueueKey) -> list[str]:
        """The bindings to ask, in turn, to take a group queue's next attempt (the
        weighted round robin's pick first); empty when none is usable."""
        group = route_group(key[0])
        if group is None:
            return [key[0]]
        return self._chooser.order(group, self.members(key) or (), self.usable_members(key))

    def reroutable(self, key: QueueKey) -> bool:
        """Whether a group queue's attempt that found no plumbed path for its chosen
        binding may go again at once: the MX's families are known now (so the next
        choice is made for them, and cannot pick a binding without a path for them
        again) and some binding has a path for them."""
        return (self.members(key) is not None and self._families(key[1]) is not None
                and bool(self.usable_members(key)))

    def _has_path(self, settings: Any, families: frozenset[int] | None) -> bool:
        """Whether mail under ``settings`` has a plumbed proxy for one of ``families``
        (None: any family it has a source for); True for direct delivery."""
        if not settings.uses_proxy:
            return True
        if settings.src_ipv4 is None and settings.src_ipv6 is None:
            sources: list[str | None] = [None]
        else:
            wanted = (4, 6) if families is None else sorted(families)
            sources = [s for s in (settings.source_for(f) for f in wanted) if s]
        try:
            return any(self._registry.is_plumbed(server, source)
                       for server in settings.proxy_servers for source in sources)
        except Exception:
            return True  # a server the registry does not know yet: let the agent decide

    def forget_groups(self) -> None:
        """Drop the choice state of groups the current config no longer has."""
        with contextlib.suppress(Exception):  # a config we cannot read keeps the state
            self._chooser.forget(list(self._config().groups))

    def policy(self, key: QueueKey) -> RetryPolicy:
        settings = self.settings(key)
        return FALLBACK_POLICY if settings is None else RetryPolicy.from_settings(settings)

    def _limit_share(self) -> int:
        """How many worker processes share the limits (1: this process alone)."""
        try:
            return max(1, int(self._config().service.limit_share))
        except Exception:
            return 1

    def max_connections(self, key: QueueKey) -> int:
        """The queue's ``max_connections``; this worker's share of it with ``workers > 1``.
        A group queue may run as many as its usable bindings together (each attempt
        still takes a slot of its chosen binding's own)."""
        if self.members(key) is not None:
            return max(FALLBACK_MAX_CONNECTIONS, sum(
                self.max_connections((name, key[1])) for name, _ in self.usable_members(key)))
        settings = self.settings(key)
        if settings is None:
            return FALLBACK_MAX_CONNECTIONS
        return share_count(settings.max_connections, self._limit_share())

    def throttle(self, key: QueueKey) -> Throttle | None:
        """The queue's ``outbound_throttle_messages`` (this worker's share with
        ``workers > 1``); None (unthrottled) if unknown now, and for a group queue,
        whose attempts count against their chosen binding's throttle."""
        settings = self.settings(key)
        if settings is None or route_group(key[0]) is not None:
            return None
        return share_throttle(settings.outbound_throttle_messages, self._limit_share())

    def delay_warning_time(self, key: QueueKey) -> int:
        """The queue's ``delay_warning_time`` (0: no "delayed" DSN, also if unknown now)."""
        settings = self.settings(key)
        return 0 if settings is None else settings.delay_warning_time

    def uses(self, key: QueueKey, server: Any) -> bool:
        """Whether the queue's route goes through the proxy ``server`` (for a group
        queue: one of its bindings' routes)."""
        members = self.members(key)
        if members is not None:
            return any(self.uses((name, key[1]), server) for name in members)
        settings = self.settings(key)
        return settings is not None and settings.uses_proxy and server in settings.proxy_servers

    def health_interval(self) -> float:
        try:
            return self._config().health.interval
        except Exception:
            return FALLBACK_POLICY.retry_interval

    def failure_window(self) -> float:
        """How long before the health check sees a proxy go it may already be
        gone: the checks that must fail in a row, plus one interval."""
        try:
            checks = self._registry.failure_threshold + 1
        except Exception:
            checks = 1
        return self.health_interval() * checks

    def grace(self) -> float:
        try:
            return self._config().service.shutdown_grace
        except Exception:
            return 0

    def no_plumbed_proxy(self, key: QueueKey) -> str | None:
        """Why the queue's route cannot run now, or None when it can (or we cannot tell)."""
        members = self.members(key)
        if members is not None:
            if self.usable_members(key):
                return None
            names = ", ".join(members) or "none"
            return (f"4.4.0 no binding of binding_group {route_group(key[0])} has a plumbed "
                    f"ha_proxy_server path and binding_weight above 0 ({names})")
        settings = self.settings(key)
        # The MX's address family is unknown before the agent resolves it: the queue may
        # run while any server is plumbed from any of the binding's sources (the smtp
        # health check keeps a state per server and source).
        if settings is None or self._has_path(settings, None):
            return None
        servers = ", ".join(s.text for s in settings.proxy_servers)
        return f"4.4.0 no plumbed ha_proxy_server for binding {key[0]} ({servers} unplumbed)"
