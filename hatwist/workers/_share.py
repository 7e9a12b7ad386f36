# -*- test-case-name: tests.workers.test_share -*-
"""
What one worker of N may use of the configured limits, and the config a worker runs with.

Without limits shared between processes, the only way N workers keep a relay-wide limit
is that each keeps 1/N of it. Rounding must never let the N together exceed the limit's
intent: a count is divided downwards, and where the share would be below one, the window
is stretched instead (a ``1/3600`` throttle over two workers is ``1/7200`` each, so the
relay still starts at most one message an hour on average). A concurrency limit cannot
be stretched: a ``max_connections`` smaller than the number of workers still gives each
worker one connection, and ``check-config`` says that the limits are divided.

Pure: no I/O, no reactor.
"""

from __future__ import annotations

import os

import attrs

from hatwist.config import Config
from hatwist.config.values import Throttle

__all__ = ["partition_dir", "share_count", "share_throttle", "worker_config"]

PARTITION_PREFIX = "worker-"


def share_count(limit: int, workers: int) -> int:
    """One worker's part of a count limit: ``limit // workers``, at least 1."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers!r}")
    return max(1, limit // workers)


def share_throttle(throttle: Throttle | None, workers: int) -> Throttle | None:
    """One worker's part of an ``outbound_throttle_messages`` window.

    ``m/s`` becomes ``(m // n)/s`` while that is at least one message; below that,
    ``1/ceil(s * n / m)``: one message per a window long enough that the n workers
    together stay at or under m messages per s seconds.
    """
    if throttle is None or workers == 1:
        return throttle
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers!r}")
    if throttle.messages >= workers:
        return Throttle(throttle.messages // workers, throttle.seconds)
    seconds = -(-throttle.seconds * workers // throttle.messages)  # ceiling division
    return Throttle(1, seconds)


def partition_dir(spool_dir: str, worker: int) -> str:
    """Worker ``worker``'s spool partition: ``spool_dir/worker-N``. A restarted worker
    gets the same number, so it recovers exactly what its predecessor left."""
    return os.path.join(spool_dir, f"{PARTITION_PREFIX}{worker}")


def status_socket(spool_dir: str, worker: int) -> str:
    """The UNIX socket a worker serves its /status and /metrics on, for the supervisor
    only (beside the partitions, so it lives and is protected where the spool is)."""
    return os.path.join(spool_dir, f"{PARTITION_PREFIX}{worker}.status")


def worker_config(config: Config, worker: int, workers: int) -> Config:
    """The config worker ``worker`` of ``workers`` runs with: its own spool partition,
    its share of the process-wide limits, and ``limit_share`` for the scheduler's
    per-queue limits (read by ``hatwist.scheduler``'s Rules)."""
    if not 1 <= worker <= workers:
        raise ValueError(f"worker must be in 1..{workers}, not {worker!r}")
    service = config.service
    return attrs.evolve(config, service=attrs.evolve(
        service,
        spool_dir=partition_dir(service.spool_dir, worker),
        max_inbound_connections=share_count(service.max_inbound_connections, workers),
        max_inbound_connections_per_ip=share_count(
            service.max_inbound_connections_per_ip, workers),
        max_inbound_connections_unlisted=share_count(
            service.max_inbound_connections_unlisted, workers),
        max_deliveries_in_flight=share_count(service.max_deliveries_in_flight, workers),
        limit_share=workers,
        worker=worker,
    ))
