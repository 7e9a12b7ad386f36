# -*- test-case-name: tests.workers -*-
"""
Every core of a box: ``workers = N`` runs a supervisor and N relay worker processes.

- :mod:`._share`: pure; each worker's spool partition and its share of the limits;
- :mod:`._endpoints`: each worker's listening socket (SO_REUSEPORT) and its private
  status socket;
- :mod:`._supervisor`: starts, restarts and signals the workers;
- :mod:`._status`: the whole relay's /status, /metrics and page, merged from the
  workers' (the merging itself is pure, in :mod:`hatwist.web._aggregate`);
- :mod:`._worker`: what a process does to become worker N of M.

With ``workers = 1`` none of this runs: ``twistd hatwist`` is the one relay process.
"""

from ._endpoints import (
    AdoptedPortEndpoint,
    listening_socket,
    listening_sockets,
    status_endpoint,
)
from ._share import (
    partition_dir,
    share_count,
    share_throttle,
    status_socket,
    worker_config,
)
from ._supervisor import BindError, Supervisor, WorkerSlot
from ._worker import WorkerSpec, parse_worker, stop_with_parent

__all__ = [
    "AdoptedPortEndpoint",
    "BindError",
    "Supervisor",
    "WorkerSlot",
    "WorkerSpec",
    "listening_socket",
    "listening_sockets",
    "parse_worker",
    "partition_dir",
    "share_count",
    "share_throttle",
    "status_endpoint",
    "status_socket",
    "stop_with_parent",
    "worker_config",
]
