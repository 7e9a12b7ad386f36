# -*- test-case-name: tests.test_descriptors -*-
"""
Enough file descriptors for every bounded peer at once, checked when the relay starts.

Each submitter, each delivery attempt, each status connection holds a socket. If their
bounds together exceed the process's ``RLIMIT_NOFILE``, the limit, not the bounds,
decides who is refused: ``accept`` and ``connect`` fail with EMFILE, and whichever
needed a descriptor next loses it (1,030 idle HTTP connections once made SMTP sessions
fail and the proxy health checks unplumb every server). So at start the relay raises
its soft limit to the hard limit when the bounds need more, and warns when even that
is not enough, naming the keys to lower or the limit to raise.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from hatwist.config import ServiceSettings

#: Descriptors that are not peers: listening sockets, the reactor's own (epoll, waker),
#: log and spool files being written by the spool threads, DNS queries, stdio.
MARGIN = 64

_log = Logger(namespace="hatwist.descriptors")


def descriptors_needed(service: ServiceSettings, proxy_servers: int) -> int:
    """
    The descriptors the configured bounds may hold at once.

    Every attempt in flight holds a session, and as many sessions may sit idle in the
    session pool for the next message (twice ``max_deliveries_in_flight``); a health
    check opens one connection per proxy server and source family (two per server).
    """
    return (
        service.max_inbound_connections
        + 2 * service.max_deliveries_in_flight
        + service.status_max_connections
        + 2 * proxy_servers
        + MARGIN
    )


@attrs.frozen
class DescriptorLimit:
    """What the check found and did: the soft limit before and after, and the hard one."""

    needed: int
    soft_before: int
    soft: int
    hard: int

    @property
    def enough(self) -> bool:
        return self.soft == resource.RLIM_INFINITY or self.soft >= self.needed


def raise_descriptor_limit(
    needed: int,
    *,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> DescriptorLimit:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one if it is below ``needed``."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if soft != resource.RLIM_INFINITY and soft < needed:
        # An unlimited hard limit cannot be the soft one (the kernel caps it at nr_open).
        target = needed if hard == resource.RLIM_INFINITY else hard
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            pass
        else:
            soft = target
    return DescriptorLimit(needed, before, soft, hard)


def check_descriptor_limit(
    service: ServiceSettings,
    proxy_servers: int,
    **rlimit: Callable[..., object],
) -> DescriptorLimit:
    """Raise the limit if the bounds need it; log what was done, or warn when short."""
    found = raise_descriptor_limit(descriptors_needed(service, proxy_servers), **rlimit)
    if found.soft != found.soft_before:
        _log.info(
            "raised the file descriptor limit from {before} to {soft} "
            "(the configured bounds need {needed})",
            before=found.soft_before,
            soft=found.soft,
            needed=found.needed,
        )
    if not found.enough:
        _log.warn(
            "the file descriptor limit {soft} (hard {hard}) is below the {needed} the bounds "
            "may need: max_inbound_connections {inbound} + 2 x max_deliveries_in_flight "
            "{deliveries} + status_max_connections {status} + health checks and {margin} "
            "spare; when it runs out, SMTP sessions and health checks fail. Lower those "
            "keys or raise the limit (ulimit -n, systemd LimitNOFILE=)",
            soft=found.soft,
            hard=found.hard,
            needed=found.needed,
            inbound=service.max_inbound_connections,
            deliveries=service.max_deliveries_in_flight,
            status=service.status_max_connections,
            margin=MARGIN,
        )
    return found
