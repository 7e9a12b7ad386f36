# -*- test-case-name: tests.shared -*-
"""Limits of delivery attempts (``max_connections``, ``outbound_throttle_messages``).

:class:`ILimits` is the one question the scheduler asks before an attempt starts.
:class:`LocalLimits` answers it inside one process; :class:`RedisLimits` (with
``redis_url``) answers it for every worker and node that points at the same Redis.
"""

from ._interfaces import ILimits
from ._local import LocalLimits
from ._redis import RedisLimits
from ._values import Decision, Lease, Refusal

__all__ = ["Decision", "ILimits", "Lease", "LocalLimits", "RedisLimits", "Refusal"]
