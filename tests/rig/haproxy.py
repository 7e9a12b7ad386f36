"""The rig's HAProxy is :mod:`hatwist.lab.haproxy`, shipped for ``hatwist demo``
(tests: tests.rig.test_rig). Kept so ``tests.rig.haproxy`` imports keep working."""

from hatwist.lab.haproxy import (
    HAPROXY_BINARY,
    HAProxy,
    HAProxyError,
    find_haproxy,
    free_port,
    haproxy_available,
)

__all__ = [
    "HAPROXY_BINARY",
    "HAProxy",
    "HAProxyError",
    "find_haproxy",
    "free_port",
    "haproxy_available",
]
