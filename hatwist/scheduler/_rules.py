# -*- test-case-name: tests.test_scheduler -*-
"""
What the current config and proxy health say about one queue.

Asked afresh at every decision, so a config reload or a health change takes
effect at once.  Every question has an answer even when the config no longer
knows the binding (after a reload): accepted mail is then kept and retried
slowly (:data:`FALLBACK_POLICY`), never dropped or bounced at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hatwist.config.shares import share_count, share_throttle
from hatwist.config.values import Throttle
from hatwist.schedule import RetryPolicy

from ._queues import QueueKey

#: For a message whose binding vanished from the config.
FALLBACK_POLICY = RetryPolicy(retry_interval=15 * 60, message_expiration=5 * 24 * 3600)
FALLBACK_MAX_CONNECTIONS = 1


class Rules:
    """
    :param config_provider: returns the current ``Config``.
    :param registry: the proxy :class:`hatwist.health.ServerRegistry`.
    """

    def __init__(self, config_provider: Callable[[], Any], registry: Any) -> None:
        self._config = config_provider
        self._registry = registry

    def settings(self, key: QueueKey) -> Any:
        """The delivery settings of (binding, domain), or None if unknown now."""
        try:
            return self._config().binding(key[0]).settings_for(key[1])
        except Exception:
            return None

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
        """The queue's ``max_connections``; this worker's share of it with ``workers > 1``."""
        settings = self.settings(key)
        if settings is None:
            return FALLBACK_MAX_CONNECTIONS
        return share_count(settings.max_connections, self._limit_share())

    def throttle(self, key: QueueKey) -> Throttle | None:
        """The queue's ``outbound_throttle_messages`` (this worker's share with
        ``workers > 1``); None (unthrottled) if unknown now."""
        settings = self.settings(key)
        if settings is None:
            return None
        return share_throttle(settings.outbound_throttle_messages, self._limit_share())

    def delay_warning_time(self, key: QueueKey) -> int:
        """The queue's ``delay_warning_time`` (0: no "delayed" DSN, also if unknown now)."""
        settings = self.settings(key)
        return 0 if settings is None else settings.delay_warning_time

    def uses(self, key: QueueKey, server: Any) -> bool:
        """Whether the queue's route goes through the proxy ``server``."""
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
        settings = self.settings(key)
        if settings is None or not settings.uses_proxy:
            return None
        # The MX's address family is unknown before the agent resolves it: the queue may
        # run while any server is plumbed from any of the binding's sources (the smtp
        # health check keeps a state per server and source).
        sources = [s for s in (settings.src_ipv4, settings.src_ipv6) if s] or [None]
        try:
            if any(
                self._registry.is_plumbed(server, source)
                for server in settings.proxy_servers
                for source in sources
            ):
                return None
        except Exception:
            return None  # a server the registry does not know yet: let the agent decide
        servers = ", ".join(s.text for s in settings.proxy_servers)
        return f"4.4.0 no plumbed ha_proxy_server for binding {key[0]} ({servers} unplumbed)"
