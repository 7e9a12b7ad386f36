# -*- test-case-name: tests.test_inbound -*-
"""
The end of DATA in an L{InboundSession}: judge the message, then hand it to the spool
and answer only once it is durable (a mixin, so the session module stays about
commands and flow control).

  - a message refused by L{judge_message}, or naming a binding whose
    C{allowed_submitters} does not list the submitter, is answered and dropped; the
    session goes on, ready for MAIL;
  - otherwise the session reads nothing until L{Spool.store} fired: C{250} with the
    queue id after it, C{452 4.3.1} for a L{SpoolWriteError}, C{451 4.3.0} else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure

from hatwist.config.settings import route_group
from hatwist.spool import SpooledMessage, SpoolWriteError

from ._admission import Peer
from ._data import Accepted, DataReader, judge_message
from ._syntax import Refusal, printable, received_field

if TYPE_CHECKING:
    from ._factory import InboundFactory


class SpoolHandoff:
    """End of DATA for L{InboundSession} (which provides the attributes used)."""

    factory: InboundFactory
    log: Any
    _data: DataReader | None
    _peer: Peer
    _user: str | None
    _helo: str | None
    _mail_from: str | None
    _rcpts: list[str]
    _smtputf8: bool
    _tls_active: bool
    _busy: bool
    _junk: int
    _reply: Callable[[int, str | None, str], None]
    _reset: Callable[[], None]
    _resume: Callable[[object], None]
    _update_reading: Callable[[], None]
    setTimeout: Callable[[float | None], object]

    def _end_of_data(self, reader: DataReader) -> None:
        self._data = None
        verdict = judge_message(reader, self.factory.binding_exists)
        if isinstance(verdict, Accepted) and not self.factory.binding_permits(
                verdict.binding, self._peer, self._user):
            who = f"user {printable(self._user)}" if self._user else str(self._peer)
            group = route_group(verdict.binding)
            named = (f'binding "{verdict.binding}"' if group is None else
                     f'binding_group "{group}" (every one of its bindings must allow it)')
            verdict = Refusal(550, "5.7.1", f"Error: {named} may not be used by {who}")
        if isinstance(verdict, Refusal):
            self.log.info("refused a message from {peer}: {code} {enhanced} {text}",
                          peer=str(self._peer), code=verdict.code, enhanced=verdict.enhanced,
                          text=verdict.text)
            return self._refuse(verdict.code, verdict.enhanced, verdict.text)
        self._busy = True
        self.setTimeout(None)
        self._update_reading()
        mail_from, rcpts = self._mail_from, tuple(self._rcpts)
        trace = received_field(helo=self._helo, peer=self._peer,
                               hostname=self.factory.hostname,
                               date=self.factory.reactor.seconds(), protocol=self._protocol)
        # Only a message that needs it carries the flag, so a spool without the
        # field (and test doubles) keep working for every other message.
        flags = {"smtputf8": True} if self._smtputf8 else {}
        d = maybeDeferred(self.factory.spool.store, verdict.binding, mail_from, rcpts,
                          trace + verdict.content, **flags)
        d.addCallbacks(self._stored, self._not_stored)
        d.addBoth(self._resume)

    @property
    def _protocol(self) -> str:
        """The Received: ``with`` keyword: RFC 3848 (ESMTPS/ESMTPSA), RFC 6531 (UTF8)."""
        name = ("UTF8SMTP" if self._smtputf8 else "ESMTP") + ("S" if self._tls_active else "")
        return name + ("A" if self._user is not None else "")

    def _refuse(self, code: int, enhanced: str, text: str) -> None:
        """Refuse the message just received; the session goes on, ready for MAIL."""
        self._reset()
        self._reply(code, enhanced, text)

    def _stored(self, message: SpooledMessage) -> None:
        self._junk = 0  # a session that delivers mail is not idling
        self._reply(250, "2.0.0", f"Ok: queued as {message.id}")
        self.log.info("accepted {id} from {peer}{user}: binding {binding}, {size} bytes, "
                      "{count} recipients", id=message.id, peer=str(self._peer),
                      user=f" (user {printable(self._user)})" if self._user else "",
                      binding=message.binding, size=message.size,
                      count=len(message.recipients))
        try:  # spooled is spooled: hand it on even if the client is gone
            self.factory.on_accepted(message)
        except Exception:
            self.log.failure("on_accepted failed for {id}", id=message.id)

    def _not_stored(self, failure: Failure) -> None:
        if failure.check(SpoolWriteError):
            self.log.error("spool write failed: {error}", error=failure.value)
            self._reply(452, "4.3.1", "Insufficient system storage")
        else:
            self.log.failure("spool store failed", failure)
            self._reply(451, "4.3.0", "Local error in processing")
