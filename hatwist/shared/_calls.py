# -*- test-case-name: tests.shared.test_redis -*-
"""The blocking calls of the shared limits that do not ride with the starts' batch.

Each runs in the limits' thread pool (redis-py blocks): the heartbeat's renewals, the
goodbye at a stop and the replay after an outage.  Plain functions of a client, so
:class:`~hatwist.shared.RedisLimits` stays the one place that holds state.
"""

from __future__ import annotations

from typing import Any

import redis

from hatwist.config.values import Throttle

from ._scripts import Script
from ._values import Lease, redis_key

#: Leases renewed per HEARTBEAT call (Lua's unpack and one reply stay small).
RENEW_BATCH = 500


def renew_all(client: redis.Redis, script: Script, prefix: str, node_id: str, ttl_ms: int,
              leases: list[Lease]) -> int:  # fmt: skip
    """Register this node, renew its leases, count the live nodes."""
    nodes_key = f"{prefix}:nodes"
    head = [node_id, ttl_ms, ttl_ms]
    count = 0
    for i in range(0, max(1, len(leases)), RENEW_BATCH):
        batch = leases[i : i + RENEW_BATCH]
        keys = [nodes_key] + [redis_key(prefix, "slots", lease.key) for lease in batch]
        count = script(client, keys, head + [lease.id for lease in batch])
    return int(count)


def goodbye(client: redis.Redis, prefix: str, node_id: str,
            releases: list[tuple[str, str]]) -> None:  # fmt: skip
    """At a stop: give back what this node holds (slots, credits), unregister it."""
    pipe = client.pipeline(transaction=False)
    for key, member in releases:
        pipe.zrem(key, member)
    pipe.zrem(f"{prefix}:nodes", node_id)
    pipe.execute()


def replay(client: redis.Redis, script: Script,
           entries: list[tuple[str, Throttle, list[tuple[int, str]]]]) -> None:  # fmt: skip
    """Tell Redis about this node's starts that still count (after an outage)."""
    for key, throttle, starts in entries:
        args: list[Any] = [throttle.messages, throttle.seconds]
        for age, start_id in starts:
            args += [age, start_id]
        script(client, [key], args)
