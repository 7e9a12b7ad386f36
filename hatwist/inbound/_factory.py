# -*- test-case-name: tests.test_inbound_limits -*-
"""
The listening factory: one L{InboundSession} per connection, the connection
slots (L{hatwist.inbound._admission}), and the settings a reload may change.

Every attribute below is read by the sessions at the moment they need it, so
assigning a new value (what L{hatwist.tap.RelayService} does on SIGHUP) takes
effect for the next command or connect; sessions already open keep their slot.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import protocol, threads
from twisted.internet.defer import Deferred, DeferredSemaphore, succeed

from hatwist.spool import SpooledMessage

from ._admission import Admission, Limits, Peer, Refused
from ._auth import LoginThrottle, Users, check_password
from ._session import InboundSession
from ._tls import ServerTLS

MAX_SESSIONS = 100
"""Sessions at once from peers inside relay_from: each may buffer a whole
message, so this bounds memory."""
MAX_SESSIONS_PER_IP = 10
MAX_SESSIONS_UNLISTED = 5
IDLE_TIMEOUT = 300.0
"""RFC 5321 section 4.5.3.2: at least five minutes between commands."""
JUNK_COMMAND_LIMIT = 100
"""Postfix's smtpd_junk_command_limit default."""
MAX_PASSWORD_CHECKS = 2
"""Password checks (bcrypt or SHA-512-crypt) running at once (each takes a core for
tens of milliseconds or more): a flood of AUTH attempts cannot take every CPU or thread."""
MAX_WAITING_CHECKS = 50
"""Password checks queued behind those; one more gets 454 4.7.0 at once."""


class InboundFactory(protocol.Factory):
    """Listen with this: one L{InboundSession} per submitter connection.

    @param spool: has C{store(binding, mail_from, rcpt_to, content)} returning a
        Deferred that fires once the message is durable (L{hatwist.spool.Spool}).
    @param relay_from: networks (L{ipaddress.ip_network}) allowed to relay.
    @param binding_exists: C{name -> bool}, asked for every message with the
        canonical (lower-case) name.
    @param on_accepted: called with each L{SpooledMessage} after its 250.
    @param reactor: L{IReactorTime}, for timeouts and the Received date.
    @param max_sessions: sessions at once from peers inside C{relay_from}; one
        more gets C{421 4.3.2} at connect.
    @param max_sessions_per_ip: sessions at once from one address (C{421 4.7.0}).
    @param max_sessions_unlisted: sessions at once from all peers outside
        C{relay_from}, a pool of their own (C{421 4.3.2}).
    @param idle_timeout: seconds since the last command that moved a transaction
        on (NOOP and other junk do not count) before C{421 4.4.2}.
    @param junk_command_limit: NOOP, RSET, VRFY, unknown verbs and repeated
        HELO/EHLO allowed per session (reset by each accepted message) before
        C{421 4.7.0}.
    @param postmaster_address: where mail to the bare C{postmaster} goes (RFC
        5321 section 4.5.1); by default C{postmaster@HOSTNAME}.
    @param tls: the STARTTLS context (L{ServerTLS}); None offers no STARTTLS.
    @param tls_required: refuse MAIL with C{530 5.7.0} before STARTTLS.
    @param users: the AUTH users (L{Users}); None offers no AUTH.
    @param binding_permits: C{(binding, peer, user) -> bool}: whether that
        submitter may name that binding (C{allowed_submitters}).
    """

    def __init__(self, *, spool: Any,
                 relay_from: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
                 max_message_size: int, hostname: str, binding_exists: Callable[[str], bool],
                 on_accepted: Callable[[SpooledMessage], object], reactor: Any,
                 idle_timeout: float = IDLE_TIMEOUT, max_sessions: int = MAX_SESSIONS,
                 max_sessions_per_ip: int = MAX_SESSIONS_PER_IP,
                 max_sessions_unlisted: int = MAX_SESSIONS_UNLISTED,
                 junk_command_limit: int = JUNK_COMMAND_LIMIT,
                 postmaster_address: str | None = None, tls: ServerTLS | None = None,
                 tls_required: bool = False, users: Users | None = None,
                 binding_permits: Callable[[str, Peer, str | None], bool] | None = None,
                 login_throttle: LoginThrottle | None = None,
                 max_password_checks: int = MAX_PASSWORD_CHECKS,
                 max_waiting_checks: int = MAX_WAITING_CHECKS) -> None:
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        self.spool = spool
        self.relay_from = tuple(relay_from)
        self.max_message_size = max_message_size
        self.hostname = hostname
        self.binding_exists = binding_exists
        self.on_accepted = on_accepted
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.max_sessions_per_ip = max_sessions_per_ip
        self.max_sessions_unlisted = max_sessions_unlisted
        self.junk_command_limit = junk_command_limit
        self._postmaster = postmaster_address
        self.tls = tls
        self.tls_required = tls_required
        self.users = users
        self.binding_permits = binding_permits or (lambda binding, peer, user: True)
        self.login_throttle = LoginThrottle() if login_throttle is None else login_throttle
        self.max_waiting_checks = max_waiting_checks
        self._checks = DeferredSemaphore(max_password_checks)
        self.sessions: set[InboundSession] = set()
        """Open sessions, for a graceful shutdown to wait on (L{when_idle})."""
        self.admission = Admission()
        self._idle_waiters: list[Deferred[None]] = []

    @property
    def postmaster_address(self) -> str:
        return self._postmaster or f"postmaster@{self.hostname}"

    @postmaster_address.setter
    def postmaster_address(self, address: str | None) -> None:
        self._postmaster = address

    @property
    def limits(self) -> Limits:
        return Limits(self.max_sessions, self.max_sessions_per_ip, self.max_sessions_unlisted)

    @property
    def password_checks_waiting(self) -> int:
        """Password checks queued for a thread now (not counting those running)."""
        return len(self._checks.waiting)

    def run_password_check(self, users: Users | None, user: str,
                           password: bytes) -> Deferred[bool]:
        """Check a password in a thread, at most C{max_password_checks} at once."""
        if users is None:
            return succeed(False)
        return self._checks.run(threads.deferToThread, check_password, users, user, password)

    def buildProtocol(self, addr: Any) -> InboundSession:
        return InboundSession(self)

    def relays_for(self, peer: Peer) -> bool:
        """Whether ``peer`` is inside C{relay_from}."""
        return peer is not None and any(peer in net for net in self.relay_from)

    def admit(self, session: InboundSession) -> Refused | None:
        """Take a slot for a new session, or say why there is none."""
        refused = self.admission.check(self.limits, session.peer, session.relay_allowed)
        if refused is None:
            self.admission.add(session.peer, session.relay_allowed)
            self.sessions.add(session)
        return refused

    def when_idle(self) -> Deferred[None]:
        """Fires once no session is open (at once if none is), so a shutdown can let
        transactions finish without polling; cancel it to stop waiting."""
        if not self.sessions:
            return succeed(None)
        d: Deferred[None] = Deferred(self._idle_waiters.remove)
        self._idle_waiters.append(d)
        return d

    def session_ended(self, session: InboundSession) -> None:
        """An admitted session's connection is gone (called by the session)."""
        if session in self.sessions:
            self.sessions.discard(session)
            self.admission.remove(session.peer, session.relay_allowed)
        if not self.sessions:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)
