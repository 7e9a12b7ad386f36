# -*- test-case-name: tests.workers.test_make_service -*-
"""
The two ways ``twistd hatwist`` runs with ``workers > 1``, wired here so that
``hatwist.tap`` only chooses: :func:`make_supervisor` (no ``--worker``: the process an
operator starts) and :func:`make_worker` (``--worker N/M``: started by the supervisor).

A worker re-runs twistd itself with the same config file, so a worker is exactly the
relay ``workers = 1`` runs, with three differences made here: it listens on the
supervisor's socket, serves its status on a private UNIX socket, and runs with
:func:`hatwist.workers.worker_config` applied to every config it loads (its partition
and its share of the limits, at start and at each reload).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from hatwist import __version__
from hatwist.config import Config
from hatwist.tap import StartupError, _ListeningService, server_endpoint

from ._endpoints import AdoptedPortEndpoint, status_endpoint
from ._share import status_socket, worker_config
from ._status import WorkerStatus, make_supervisor_site
from ._supervisor import BindError, Supervisor
from ._worker import WorkerSpec, stop_with_parent

__all__ = ["make_supervisor", "make_worker"]

_LAUNCH = (
    "import sys; sys.argv = ['twistd', '-n', '--pidfile=', "
    "'--logger', 'hatwist.workers._log.worker_observer', 'hatwist', '--config', {config!r}, "
    "'--worker', {worker!r}]; from twisted.scripts.twistd import run; run()"
)


def worker_argv(config_path: str, worker: int, workers: int) -> list[str]:
    """How the supervisor starts worker N: twistd in the foreground (no pid file), logging
    to the stdout it inherits from the supervisor."""
    launch = _LAUNCH.format(config=os.path.abspath(config_path), worker=f"{worker}/{workers}")
    return [sys.executable, "-c", launch]


def make_supervisor(config: Config, reactor: Any, config_path: str) -> Supervisor:
    workers = config.service.workers
    supervisor = Supervisor(
        config, reactor=reactor,
        argv_for=lambda n: worker_argv(config_path, n, workers),
    )
    supervisor.startup_errors = (BindError, StartupError)
    supervisor.exit_on_startup_error = True
    status = WorkerStatus(
        reactor, supervisor.slots,
        lambda n: status_socket(config.service.spool_dir, n), __version__, workers,
    )
    listener = _ListeningService(
        server_endpoint(reactor, config.service.status_listen),
        make_supervisor_site(status, reactor,
                             max_connections=config.service.status_max_connections,
                             idle_timeout=config.service.status_idle_timeout),
        name="status_listen", address=str(config.service.status_listen),
    )
    listener.setServiceParent(supervisor)
    supervisor.status_listener = listener
    return supervisor


def make_worker(config: Config, reactor: Any, spec: WorkerSpec, relay_class: Any) -> Any:
    stop_with_parent()

    def prepare(loaded: Config) -> Config:
        return worker_config(loaded, spec.worker, spec.workers)

    family = socket.AF_INET6 if config.service.listen.ip_version == 6 else socket.AF_INET
    return relay_class(
        prepare(config), reactor=reactor, prepare=prepare,
        listen_endpoint=AdoptedPortEndpoint(reactor, spec.fd, family),
        status_endpoint=status_endpoint(
            reactor, status_socket(config.service.spool_dir, spec.worker)),
    )
