# -*- test-case-name: tests.workers.test_share -*-
"""
Each worker's spool partition and status socket, and the config a worker runs with.

A worker runs the relay on its own partition with its share of the process-wide limits
(:mod:`hatwist.config.shares`), and ``limit_share`` set for the scheduler's per-queue
limits. Pure: no I/O, no reactor.
"""

from __future__ import annotations

import os

import attrs

from hatwist.config import Config
from hatwist.config.shares import share_count, share_throttle

__all__ = ["partition_dir", "share_count", "share_throttle", "status_socket", "worker_config"]

PARTITION_PREFIX = "worker-"


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
    per-queue limits (read by ``hatwist.scheduler``'s Rules; 1 with ``redis_url``, whose
    limits are shared instead)."""
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
        # With redis_url the per-queue limits hold fleet-wide in Redis (each worker is a
        # node there, and its degraded local share divides by the nodes it last saw).
        limit_share=1 if service.redis_url is not None else workers,
        control_socket=_own_socket(getattr(service, "control_socket", None), worker),
        worker=worker,
    ))


def _own_socket(path: str | None, worker: int) -> str | None:
    """A configured ``control_socket`` made this worker's own (``DIR/worker-N-NAME``);
    unset, each worker's is in its partition already."""
    if path is None:
        return None
    head, name = os.path.split(path)
    return os.path.join(head, f"{PARTITION_PREFIX}{worker}-{name}")
