# -*- test-case-name: tests.test_inbound_tls -*-
"""
STARTTLS (RFC 3207) and AUTH PLAIN / LOGIN (RFC 4954) of an L{InboundSession}.

A mixin, because both change the session's own state (its input buffer, who it
is talking to); kept apart so that the session module stays about commands and
DATA.  What it promises:

  - STARTTLS discards every byte the client sent after the STARTTLS line before
    the handshake (the CVE-2011-0411 class of command injection: such bytes were
    sent in plaintext and must never run as commands of the TLS session), and
    forgets the EHLO and the transaction (RFC 3207 section 4.2);
  - only TLS 1.2 and later are negotiated (L{hatwist.inbound._tls});
  - AUTH is offered and accepted only over TLS, with PLAIN and LOGIN; the
    password is checked in a thread, at most C{max_password_checks} at once over
    all sessions, and never logged;
  - failed logins are slowed down per client address (L{LoginThrottle}); at the
    limit the session gets C{421 4.7.0} and so does every AUTH from that address
    until the throttle's window has passed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import task

from ._auth import (
    PASSWORD_PROMPT,
    USERNAME_PROMPT,
    Credentials,
    SASLError,
    decode_base64,
    decode_login_user,
    decode_plain,
)
from ._syntax import printable

if TYPE_CHECKING:
    from ._factory import InboundFactory

MECHANISMS = ("PLAIN", "LOGIN")


class SecureCommands:
    """STARTTLS and AUTH for L{InboundSession} (which provides the attributes used)."""

    factory: InboundFactory
    transport: Any
    log: Any
    _tls_active: bool
    _user: str | None
    _sasl: Callable[[str], None] | None
    _helo: str | None
    _mail_from: str | None
    _buffer: bytes
    _at: int
    _busy: bool
    _closing: bool
    _reply: Callable[[int, str | None, str], None]
    _error: Callable[[int, str, str], None]
    _close: Callable[[int, str, str], None]
    _reset: Callable[[], None]
    _useful: Callable[[], None]
    _resume: Callable[[object], None]
    _update_reading: Callable[[], None]
    setTimeout: Callable[[float | None], object]
    peer: Any  # the session's property

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def user(self) -> str | None:
        """Who the client logged in as (SMTP AUTH), or None."""
        return self._user

    @property
    def _offers_auth(self) -> bool:
        return self._tls_active and self.factory.users is not None

    def _extension_lines(self) -> list[str]:
        lines = []
        if self.factory.tls is not None and not self._tls_active:
            lines.append("STARTTLS")
        if self._offers_auth:
            lines.append("AUTH " + " ".join(MECHANISMS))
        return lines

    def _tls_refusal(self) -> bool:
        """With listen_tls = required, refuse a command that needs TLS first."""
        if self.factory.tls_required and not self._tls_active:
            self._error(530, "5.7.0", "Must issue a STARTTLS command first")
            return True
        return False

    # -- STARTTLS ------------------------------------------------------------------------

    def smtp_STARTTLS(self, argument: str) -> None:
        tls = self.factory.tls
        if tls is None:
            return self._error(502, "5.5.1", "Error: STARTTLS not implemented")
        if argument:
            return self._error(501, "5.5.4", "Syntax: STARTTLS")
        if self._tls_active:
            return self._error(503, "5.5.1", "Error: TLS already active")
        discarded = len(self._buffer) - self._at
        if discarded:
            self.log.warn("discarded {count} octets sent after STARTTLS by {peer} before "
                          "the TLS handshake (command injection)", count=discarded,
                          peer=str(self.peer))
        self._buffer, self._at = b"", 0
        self._reply(220, "2.0.0", "Ready to start TLS")
        self._tls_active = True
        self._helo = None
        self._reset()
        self._useful()
        self.transport.startTLS(tls.options)

    # -- AUTH ----------------------------------------------------------------------------

    def smtp_AUTH(self, argument: str) -> None:
        if self.factory.users is None:
            return self._error(502, "5.5.1", "Error: AUTH not implemented")
        if not self._tls_active:
            return self._error(538, "5.7.11", "Encryption required for requested "
                               "authentication mechanism")
        if self._helo is None:
            return self._error(503, "5.5.1", "Error: send HELO/EHLO first")
        if self._user is not None:
            return self._error(503, "5.5.1", "Error: already authenticated")
        if self._mail_from is not None:
            return self._error(503, "5.5.1", "Error: MAIL transaction in progress")
        if self.factory.login_throttle.locked(self.peer, self.factory.reactor.seconds()):
            return self._locked_out()
        mechanism, _, initial = argument.partition(" ")
        mechanism, initial = mechanism.upper(), initial.strip()
        if mechanism == "PLAIN":
            if initial:
                return self._plain(initial)
            return self._ask("", self._plain)
        if mechanism == "LOGIN":
            if initial:
                return self._login_user(initial)
            return self._ask(USERNAME_PROMPT, self._login_user)
        self._error(504, "5.5.4", "Error: unsupported authentication mechanism "
                    f"{printable(mechanism, 20)}")

    def _ask(self, challenge: str, then: Callable[[str], None]) -> None:
        """Send a 334 challenge; the next line is the client's answer."""

        def answer(line: str) -> None:
            if line.strip() == "*":
                return self._error(501, "5.7.0", "Authentication aborted")
            then(line.strip())

        self._sasl = answer
        self._reply(334, None, challenge)

    def _sasl_line(self, line: bytes) -> None:
        handler, self._sasl = self._sasl, None
        assert handler is not None
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return self._error(501, "5.5.2", "Error: invalid base64 data")
        handler(text)

    def _plain(self, response: str) -> None:
        try:
            credentials = decode_plain(response)
        except SASLError as e:
            return self._error(501, "5.5.2", f"Error: {e}")
        self._check(credentials)

    def _login_user(self, response: str) -> None:
        try:
            user = decode_login_user(response)
        except SASLError as e:
            return self._error(501, "5.5.2", f"Error: {e}")

        def password(answer: str) -> None:
            try:
                secret = decode_base64(answer)
            except SASLError as e:
                return self._error(501, "5.5.2", f"Error: {e}")
            self._check(Credentials(user, secret))

        self._ask(PASSWORD_PROMPT, password)

    def _check(self, credentials: Credentials) -> None:
        """Check the password off the reactor thread; read nothing meanwhile."""
        factory = self.factory
        if factory.password_checks_waiting >= factory.max_waiting_checks:
            self.log.warn("too many password checks waiting; AUTH from {peer} deferred",
                          peer=str(self.peer))
            return self._reply(454, "4.7.0", "Temporary authentication failure")
        self._busy = True
        self.setTimeout(None)
        self._update_reading()
        users = factory.users
        d = factory.run_password_check(users, credentials.user, credentials.password)
        d.addCallback(self._checked, credentials.user)
        d.addErrback(self._check_failed)
        d.addBoth(self._resume)

    def _checked(self, matched: bool, user: str) -> Any:
        factory, peer = self.factory, self.peer
        if matched:
            factory.login_throttle.succeeded(peer)
            self._user = user
            self.log.info("authenticated {user} from {peer}", user=printable(user),
                          peer=str(peer))
            self._reply(235, "2.7.0", "Authentication successful")
            return None
        now = factory.reactor.seconds()
        delay = factory.login_throttle.failed(peer, now)
        locked = factory.login_throttle.locked(peer, now)
        self.log.warn("authentication failed for {user} from {peer}{locked}",
                      user=printable(user), peer=str(peer),
                      locked="; too many failures, closing" if locked else "")
        return task.deferLater(factory.reactor, delay, self._failed, locked)

    def _failed(self, locked: bool) -> None:
        if self._closing:
            return
        self._error(535, "5.7.8", "Error: authentication failed")
        if locked:
            self._locked_out()

    def _locked_out(self) -> None:
        self._close(421, "4.7.0", f"{self.factory.hostname} Error: too many failed "
                    "authentication attempts; try again later")

    def _check_failed(self, failure: Any) -> None:
        self.log.failure("password check failed", failure)
        self._reply(454, "4.7.0", "Temporary authentication failure")
