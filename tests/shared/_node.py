"""A limits node in a child process, for kill -9 (tests: tests.shared.test_redis).

``python -m tests.shared._node URL NODE_ID LEASE_TTL HEARTBEAT BINDING DOMAIN MAX N``
takes N slots of (BINDING, DOMAIN), prints ``held N`` and keeps renewing them until it
is killed, as a relay holding connections would.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, reactor

from hatwist.shared import RedisLimits


async def _hold(limits: RedisLimits, key: tuple[str, str], max_connections: int, n: int) -> None:
    held = 0
    for _ in range(n):
        decision = await defer.maybeDeferred(limits.start, key, None, max_connections,
                                             reactor.seconds())  # fmt: skip
        held += decision.granted
    print(f"held {held}", flush=True)


def main() -> None:
    url, node_id, ttl, beat, binding, domain, max_connections, n = sys.argv[1:]
    limits = RedisLimits(url, node_id=node_id, lease_ttl=float(ttl), heartbeat=float(beat))
    limits.startService()
    key, slots, count = (binding, domain), int(max_connections), int(n)
    reactor.callWhenRunning(lambda: defer.ensureDeferred(_hold(limits, key, slots, count)))
    reactor.run()


if __name__ == "__main__":
    main()
