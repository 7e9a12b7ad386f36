# -*- test-case-name: tests.test_tap -*-
"""
``twistd hatwist --config FILE``: the relay as one Twisted service tree.

:class:`RelayService` wires the parts once from a :class:`~hatwist.config.Config`, in the
order the data flows: spool threads -> proxy health -> scheduler -> status web -> inbound
listener. Twisted starts children in that order; :meth:`RelayService.stopService` stops
them one after another in reverse, which is exactly the shutdown operators want: stop
accepting mail first, let attempts in flight finish within ``shutdown_grace``, and leave
everything else durable in the spool.

SIGHUP reloads the config file atomically: the new file is read and validated off the
reactor thread; if it is invalid the error is logged and the running config stays.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, threads
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from hatwist import __version__
from hatwist._descriptors import check_descriptor_limit
from hatwist._logging import buffer_logs_of
from hatwist._signals import install_sighup
from hatwist.config import Config, ConfigError, ServerAddress, load_config, route_group
from hatwist.config.values import ListenTLSMode
from hatwist.control import ControlError, ControlService, QueueHandler
from hatwist.delivery.attempt import DeliveryAgent
from hatwist.health import HealthChecker, ServerRegistry, make_probe
from hatwist.inbound import Credentials, CredentialsError, InboundFactory, load_credentials
from hatwist.inbound._proxied import ProxiedInboundFactory
from hatwist.mx import MXResolver, build_resolver
from hatwist.scheduler import Scheduler
from hatwist.shared import RedisLimits
from hatwist.spool import Spool, SpoolService
from hatwist.web import DeliveryMetrics, History, StatusSources, make_status_site
from hatwist.workers import WorkerSpec, parse_worker

__all__ = ["Options", "RelayService", "makeService"]

SPOOL_THREADS = 4

#: twistd's exit status for a config it refuses, the same as ``hatwist check-config``'s.
EXIT_BAD_CONFIG = 2
#: Exit status when the relay cannot start (an address it cannot listen on).
EXIT_CANNOT_START = 2


class StartupError(Exception):
    """The relay cannot start; the message is one line naming the key and the reason,
    which is all an operator needs (a traceback of twistd's start-up would bury it)."""


class Options(usage.Options):
    """Command-line options of ``twistd hatwist`` / ``twist hatwist``."""

    synopsis = "--config FILE"
    longdesc = (
        "Run the hatwist relay: accept mail on `listen`, spool it durably, and deliver it "
        "through the configured HAProxy PROXY-protocol servers."
    )
    optParameters = [
        ["config", "c", "/etc/hatwist/hatwist.conf", "the hatwist config file"],
        ["worker", None, None, "(set by the supervisor when workers > 1) run as worker N/M"],
    ]

    def postOptions(self) -> None:
        """Load the config; a bad one ends twistd with its error alone on stderr and exit
        status 2, as ``hatwist check-config`` reports it (twistd's usage text would only
        hide the one line that says which file, line and key are wrong)."""
        buffer_logs_of(getattr(self, "parent", None))  # twistd's/twist's, before logging starts
        try:
            self["worker_spec"] = parse_worker(self["worker"]) if self["worker"] else None
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        try:
            self["loaded"] = load_config(self["config"])
        except OSError as error:
            self._refuse(f"cannot read config {self['config']}: {error}")
        except ConfigError as error:
            self._refuse(str(error))

    @staticmethod
    def _refuse(message: str) -> None:
        print(message, file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG)


#: Pending connections the kernel keeps for the SMTP listener (as for the workers'
#: sockets, ``hatwist.workers._endpoints.BACKLOG``): Twisted's default of 50 made a
#: single relay refuse the 51st of a burst of connections (the kernel's listen queue
#: overflowed, and the clients retried a second later). The kernel caps it at
#: net.core.somaxconn.
LISTEN_BACKLOG = 1024


def server_endpoint(reactor: Any, address: ServerAddress,
                    backlog: int = 50) -> IStreamServerEndpoint:  # fmt: skip
    """A listening endpoint for a configured ``host:port`` (an IP literal)."""
    if address.ip_version == 6:
        return TCP6ServerEndpoint(reactor, address.port, backlog=backlog,
                                  interface=address.host)
    return TCP4ServerEndpoint(reactor, address.port, backlog=backlog, interface=address.host)


class _ListeningService(service.Service):
    """
    Listens on an endpoint while running; exposes the port once listening.

    It listens in ``privilegedStartService`` (before twistd drops privileges, so port 25
    works) and raises there when the address cannot be bound: twistd then exits with the
    error instead of running a relay that has no SMTP listener.
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, factory: Any,
        on_stop: Callable[[], defer.Deferred[None]] | None = None,
        *, name: str = "listen", address: str = "",
    ) -> None:
        self.name = name
        self.address = address
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] | None = None
        self._on_stop = on_stop

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self.listening is None:
            self._listen()

    def _listen(self) -> None:
        failed: list[Any] = []

        def remember(port: IListeningPort) -> IListeningPort:
            self.port = port
            return port

        self.listening = self.endpoint.listen(self.factory)
        self.listening.addCallback(remember)
        self.listening.addErrback(failed.append)
        if failed:  # TCP endpoints report a taken address synchronously
            self.listening = None
            reason = failed[0].value
            if isinstance(reason, error.CannotListenError):
                raise StartupError(f"{self.name} {self.address}: {_why(reason)}")
            failed[0].raiseException()

    async def _stop(self) -> None:
        if self.listening is not None:
            port = await self.listening
            await port.stopListening()
        if self._on_stop is not None:
            await self._on_stop()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())


class RelayService(service.MultiService):
    """
    The whole relay. ``config`` is the running configuration; :meth:`reload` replaces it.

    Attributes ``registry``, ``scheduler``, ``spool``, ``agent``, ``inbound``, ``status``,
    ``status_site``, ``listener`` and ``status_listener`` are the named objects the status
    page and tests look at.
    """

    log = Logger()

    def __init__(
        self, config: Config, *, reactor: Any, hostname: str | None = None,
        listen_endpoint: IStreamServerEndpoint | None = None,
        status_endpoint: IStreamServerEndpoint | None = None,
        prepare: Callable[[Config], Config] = lambda config: config,
    ) -> None:
        """``listen_endpoint``/``status_endpoint`` replace the configured addresses and
        ``prepare`` adjusts each loaded config (a worker: hatwist.workers)."""
        super().__init__()
        self._prepare = prepare
        self.config = config
        self.reactor = reactor
        self.hostname = hostname or config.service.hostname or socket.getfqdn()
        self._previous_hup: Any = None  # SIGHUP's handler before ours, while running
        #: twistd/twist: a StartupError ends the process with one line (tests that build
        #: the service in-process turn this off and see the exception).
        self.exit_on_startup_error = False
        #: What was bound at start: a reload compares the new file with these, not with
        #: the previous file (which may already have differed from what runs).
        self._started_service = config.service
        health = config.health
        try:  # first, so that an unusable file leaves nothing half-built behind
            credentials = load_credentials(config.service)
        except CredentialsError as e:
            raise StartupError(str(e)) from None
        self._credentials = credentials

        self.registry = ServerRegistry(
            config.proxy_servers,
            success_threshold=health.success_threshold,
            failure_threshold=health.failure_threshold,
        )
        # The spool's read threads; its writer is its own thread.  First child: the spool
        # is locked and open before anything recovers from it or writes to it.
        self.threadpool = ThreadPool(minthreads=1, maxthreads=SPOOL_THREADS, name="hatwist-spool")
        self.spool = Spool(config.service.spool_dir, reactor=reactor, threadpool=self.threadpool)
        SpoolService(self.spool, self.threadpool).setServiceParent(self)

        self.checker = HealthChecker(
            self.registry, health, self._probe(config), reactor=reactor
        )
        self.checker.setServiceParent(self)

        resolver = config.service.resolver
        self.resolver = MXResolver(
            build_resolver(
                (resolver.host, resolver.port) if resolver else None, reactor=reactor
            ),
            reactor=reactor,
        )
        self.agent = DeliveryAgent(
            config, self.registry, self.resolver, reactor=reactor,
            default_ehlo_hostname=self.hostname,
        )
        # With redis_url, limits are the fleet's: started before the scheduler and stopped
        # after it (children stop last started first), so its leases are given back.
        self.limits: RedisLimits | None = None
        if config.service.redis_url is not None:
            self.limits = RedisLimits(config.service.redis_url.url, reactor=reactor)
            self.limits.setServiceParent(self)
        self.scheduler = Scheduler(
            spool=self.spool,
            agent=self.agent,
            config_provider=lambda: self.config,
            registry=self.registry,
            reactor=reactor,
            reporting_mta=self.hostname,
            max_in_flight=config.service.max_deliveries_in_flight,
            limits=self.limits,
            families=self.resolver.known_families,
        )
        self.scheduler.setServiceParent(self)
        # hatwist queue: the control socket, as the running user, once the scheduler runs.
        self.control = ControlService(config.service.control_socket_path,
                                      QueueHandler(self.scheduler), reactor=reactor)
        self.control.setServiceParent(self)

        # Delivery counts come from the agent's one log event per attempt, so the agent
        # knows nothing of metrics; the observer is added while the service runs.
        self.deliveries = DeliveryMetrics()
        self.history = History()  # the page's last hour, from the same events
        self.status = StatusSources(
            self.registry, self.scheduler, __version__, reactor, deliveries=self.deliveries,
            history=self.history, bindings=lambda: list(self.config.bindings),
            groups=lambda: {name: group.members for name, group in self.config.groups.items()},
        )
        self.status_site = make_status_site(
            self.status,
            max_connections=config.service.status_max_connections,
            idle_timeout=config.service.status_idle_timeout,
            reactor=reactor,
        )
        self.status_listener = _ListeningService(
            status_endpoint or server_endpoint(reactor, config.service.status_listen),
            self.status_site,
            name="status_listen", address=str(config.service.status_listen),
        )
        self.status_listener.setServiceParent(self)

        self.inbound = InboundFactory(
            spool=self.spool,
            relay_from=config.service.relay_from,
            max_message_size=config.service.max_message_size,
            hostname=self.hostname,
            binding_exists=self._binding_exists,
            on_accepted=self.scheduler.submit,
            reactor=reactor,
            binding_permits=self._binding_permits,
            **_inbound_limits(config),
            **_inbound_security(config, credentials),
        )
        listening: Any = self.inbound
        if config.service.listen_proxy_protocol:  # behind a balancer: a PROXY header first
            listening = ProxiedInboundFactory(
                self.inbound, reactor=reactor,
                allowed_from=lambda: self.config.service.listen_proxy_from,
                max_pending=lambda: self.config.service.max_inbound_connections)
        self.listener = _ListeningService(
            listen_endpoint or server_endpoint(reactor, config.service.listen, LISTEN_BACKLOG),
            listening,
            on_stop=self._drain_inbound,
            name="listen", address=str(config.service.listen),
        )
        self.listener.setServiceParent(self)

    # -- wiring helpers ---------------------------------------------------------

    def _probe(self, config: Config) -> Any:
        return make_probe(config.health, reactor=self.reactor, sources_for=config.sources_for)

    def _binding_exists(self, name: str) -> bool:
        """Whether mail may be queued for ``name``: a binding, or ``group:G`` for a
        binding_group with bindings (X-Binding-Group)."""
        try:
            self.config.route(name)
        except KeyError:
            return False
        return True

    def _binding_permits(self, name: str, peer: Any, user: str | None) -> bool:
        """allowed_submitters of binding ``name``: no key lets anyone who may relay.
        Mail for a binding_group may leave from any of its bindings, so the submitter
        must be allowed on every one of them."""
        group = route_group(name)
        try:
            names = [name] if group is None else list(self.config.group(group).members)
            policies = [self.config.binding(n).base_settings.allowed_submitters
                        for n in names]
        except KeyError:
            return False
        return all(policy is None or policy.permits(peer, user) for policy in policies)

    async def _drain_inbound(self) -> None:
        """Let submitters in the middle of a transaction finish, within the grace period."""
        idle = self.inbound.when_idle()
        with contextlib.suppress(defer.TimeoutError):
            await idle.addTimeout(self.config.service.shutdown_grace, self.reactor)
        for session in list(self.inbound.sessions):
            session.transport.loseConnection()

    # -- lifecycle --------------------------------------------------------------

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            # Release whatever did bind, so the caller can report and exit cleanly.
            for listener in (self.status_listener, self.listener):
                if listener.port is not None:
                    listener.port.stopListening()
            if isinstance(e, StartupError) and self.exit_on_startup_error:
                self.log.critical("cannot start: {error}", error=str(e))
                print(f"hatwist: cannot start: {e}", file=sys.stderr)
                raise SystemExit(EXIT_CANNOT_START) from None
            raise

    def startService(self) -> None:
        self.log.info(
            "hatwist {version} starting: config {config}, listen {listen}, "
            "{servers} proxy server(s)",
            version=__version__,
            config=self.config.filename,
            listen=str(self.config.service.listen),
            servers=len(self.config.proxy_servers),
        )
        globalLogPublisher.addObserver(self.deliveries)
        globalLogPublisher.addObserver(self.history)
        check_descriptor_limit(self.config.service, len(self.config.proxy_servers))
        try:
            super().startService()
        except ControlError as e:  # one line naming the key, like a taken listen address
            if not self.exit_on_startup_error:
                raise
            self.log.critical("cannot start: {error}", error=str(e))
            print(f"hatwist: cannot start: {e}", file=sys.stderr)
            raise SystemExit(EXIT_CANNOT_START) from None
        self._previous_hup = install_sighup(self.reactor, self.reload)

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop the children one after another, last started first.

        MultiService would stop them all at once; then the spool's threads would be gone
        while a submitter is still in DATA and attempts in flight still record results.
        """
        service.Service.stopService(self)
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        return defer.Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        try:
            for child in reversed(list(self)):
                try:
                    await defer.maybeDeferred(child.stopService)
                except Exception:
                    self.log.failure("stopping {child!r} failed; stopping the rest", child=child)
            await self.agent.close()
            self.resolver.close()
        finally:
            globalLogPublisher.removeObserver(self.deliveries)
            globalLogPublisher.removeObserver(self.history)

    def reload(self) -> defer.Deferred[bool]:
        """Re-read the config file; apply it if valid. Fires True when applied."""
        filename = self.config.filename
        d = threads.deferToThread(_load_with_credentials, filename)
        d.addCallback(lambda loaded: (self._prepare(loaded[0]), loaded[1]))
        d.addCallbacks(self._apply_loaded, self._reload_failed, errbackArgs=(filename,))
        return d

    def _apply_loaded(self, loaded: tuple[Config, Credentials]) -> bool:
        config, credentials = loaded
        self._credentials = credentials
        for name, value in _inbound_security(config, credentials).items():
            setattr(self.inbound, name, value)
        return self._apply(config)

    def _reload_failed(self, failure: Any, filename: str) -> bool:
        self.log.error(
            "config reload refused, keeping the running config: {error}",
            error=str(failure.value) if failure.check(ConfigError, OSError, CredentialsError)
            else failure.getTraceback(),
            filename=filename,
        )
        return False

    def _apply(self, config: Config) -> bool:
        running = self._started_service
        for key in (
            "listen", "status_listen", "spool_dir", "resolver", "max_deliveries_in_flight",
            "hostname", "redis_url", "control_socket",
            "workers", "listen_proxy_protocol",
        ):
            if getattr(running, key) != getattr(config.service, key):
                self.log.warn(
                    "config reload: {key} is {new} in the file but {running} is in use; "
                    "the new value takes effect at the next restart",
                    key=key, new=str(getattr(config.service, key)),
                    running=str(getattr(running, key)),
                )
        health = config.health
        self.registry.update_servers(
            config.proxy_servers,
            success_threshold=health.success_threshold,
            failure_threshold=health.failure_threshold,
        )
        self.checker.reconfigure(health, self._probe(config))
        self.agent.config = config
        self.inbound.relay_from = tuple(config.service.relay_from)
        self.inbound.max_message_size = config.service.max_message_size
        for name, value in _inbound_limits(config).items():
            setattr(self.inbound, name, value)
        self.config = config
        self.scheduler.config_changed()  # pauses and backoffs by the new retry_interval
        self.log.info("config reloaded from {filename}", filename=config.filename)
        return True


def _inbound_limits(config: Config) -> dict[str, Any]:
    """The InboundFactory settings a reload may change, by attribute name."""
    service = config.service
    return {
        "max_sessions": service.max_inbound_connections,
        "max_sessions_per_ip": service.max_inbound_connections_per_ip,
        "max_sessions_unlisted": service.max_inbound_connections_unlisted,
        "idle_timeout": service.inbound_idle_timeout,
        "junk_command_limit": service.inbound_junk_command_limit,
        "postmaster_address": service.postmaster_address,
    }


def _inbound_security(config: Config, credentials: Credentials) -> dict[str, Any]:
    """The listener's TLS context, TLS policy and AUTH users, by attribute name."""
    return {
        "tls": credentials.tls,
        "tls_required": config.service.inbound_tls is ListenTLSMode.REQUIRED,
        "users": credentials.users,
    }


def _load_with_credentials(filename: str) -> tuple[Config, Credentials]:
    """A reload's blocking part (in a thread): the config file, then the certificate,
    key and users file it names; any error refuses the whole reload, so the relay keeps
    running with the old config, certificate and users."""
    config = load_config(filename)
    return config, load_credentials(config.service)



def makeService(options: Options) -> service.IService:
    """The IServiceMaker entry point used by twistd/twist: the relay, or with
    ``workers > 1`` the supervisor of that many relay workers (hatwist.workers)."""
    from twisted.internet import reactor

    config: Config = options["loaded"]
    spec: WorkerSpec | None = options.get("worker_spec")
    if spec is None and config.service.workers > 1:
        from hatwist.workers._main import make_supervisor

        return make_supervisor(config, reactor, options["config"])
    try:
        if spec is not None:
            from hatwist.workers._main import make_worker

            relay = make_worker(config, reactor, spec, RelayService)
        else:
            relay = RelayService(config, reactor=reactor)
    except StartupError as e:  # e.g. an unusable listen_tls_cert or auth_users_file
        print(f"hatwist: cannot start: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CANNOT_START) from None
    relay.exit_on_startup_error = True
    return relay


def _why(failure: error.CannotListenError) -> str:
    """``address already in use`` from a CannotListenError: the OS's reason, lower case."""
    cause = failure.socketError
    text = getattr(cause, "strerror", None) or str(cause)
    return text[:1].lower() + text[1:]
