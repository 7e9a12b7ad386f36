# -*- test-case-name: tests.delivery.test_transaction -*-
"""
The mail transactions of one message as pure logic: which command lines to write, and
what every reply means for every recipient.

Why this is apart from the wire: PIPELINING (RFC 2920) and recipient limits (RFC 5321
section 4.5.3.1.10) are rules about reply order and reply meaning, easiest to get exactly
right with no socket in sight. :class:`~hatwist.delivery._protocol.SessionProtocol`
writes what a :class:`MessageDelivery` says and feeds it every reply.

- With PIPELINING offered, RSET, MAIL, every RCPT and DATA go out in one write (one round
  trip instead of three plus one per recipient); without it, one command at a time,
  stopping at a refused MAIL or when no RCPT was accepted.
- Replies come back in command order, so each is matched to its command by position. A
  pipelined DATA that the peer nonetheless accepts with no recipient accepted gets a lone
  dot (RFC 2920 section 3.1), never content.
- A 421 anywhere in the transaction decides every recipient not yet decided (temporary);
  the peer is closing, so the session ends (:attr:`MessageDelivery.closing`).
- "Too many recipients" (452, or 552 which RFC 5321 says to treat as 452, with status
  x.5.3) is temporary. When the same transaction delivered to somebody, the refused
  recipients go at once in a further transaction on the same session, until all are
  decided or one transaction makes no progress.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from hatwist.delivery._errors import END_OF_DATA, UnexpectedReply
from hatwist.delivery._values import Envelope, RecipientResult

#: The reply that means "closing": it ends the transaction at once (RFC 5321 section 3.8).
SERVICE_CLOSING = 421

#: The code recorded for a recipient refused as one too many (RFC 5321 4.5.3.1.10).
TOO_MANY_RECIPIENTS = 452

#: Enhanced status codes for "too many recipients" (RFC 3463 x.5.3).
_TOO_MANY_STATUS = ("4.5.3", "5.5.3")


@attrs.frozen
class Step:
    """What the wire must do after a reply: write ``lines`` (each gets CRLF), then the
    message content and its final dot when ``content`` is set."""

    lines: tuple[bytes, ...] = ()
    content: bool = False


def _is_too_many(code: int, text: str) -> bool:
    if code not in (452, 552):
        return False
    return text.startswith(_TOO_MANY_STATUS) or "too many recipients" in text.lower()


class _Transaction:
    """One MAIL ... final dot exchange for some of the message's recipients (by position)."""

    def __init__(
        self,
        envelope: Envelope,
        positions: tuple[int, ...],
        mail_line: bytes,
        *,
        pipelined: bool,
        reset: bool,
    ) -> None:
        self.positions = positions
        self._pipelined = pipelined
        self._addresses = tuple(envelope.rcpt_to[i] for i in positions)
        commands = [("RSET", b"RSET")] if reset else []
        commands.append(("MAIL", mail_line))
        commands += [("RCPT", b"RCPT TO:<" + a.encode("utf-8") + b">") for a in self._addresses]
        commands.append(("DATA", b"DATA"))
        self._commands = commands
        self._written = 0
        self._answered = 0
        self._in_content = False
        self._empty = False
        self._mail_refused: tuple[int, str] | None = None
        self.results: list[RecipientResult | None] = [None] * len(positions)
        self.too_many: list[int] = []
        self.delivered_any = False
        self.closing = False
        self.done = False

    @property
    def stage(self) -> str:
        if self._in_content:
            return END_OF_DATA
        return self._commands[self._answered][0]

    def start(self) -> Step:
        return Step(self._write(len(self._commands) if self._pipelined else 1))

    def _write(self, count: int) -> tuple[bytes, ...]:
        chosen = self._commands[self._written : self._written + count]
        lines = tuple(line for _stage, line in chosen)
        self._written += len(lines)
        return lines

    def _next_command(self) -> Step:
        """Non-pipelined: write the next command (the one whose reply is now due)."""
        return Step(self._write(1)) if self._written == self._answered else Step()

    def _accepted(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if r is not None and r.kind == "delivered"]

    def _decide(self, indices: list[int], code: int, text: str) -> None:
        for i in indices:
            self.results[i] = RecipientResult(self._addresses[i], code, text)

    def _finish(self) -> Step:
        self.done = True
        return Step()

    def on_reply(self, code: int, text: str) -> Step:
        stage = self.stage
        if not self._in_content:
            self._answered += 1
        if stage == "RSET":
            if code // 100 != 2:
                raise UnexpectedReply("RSET", f"{code} {text}")
            return self._next_command()
        if code == SERVICE_CLOSING:
            self.closing = True
            if self._mail_refused is None:
                undecided = [i for i, r in enumerate(self.results) if r is None]
                self._decide(undecided + self._accepted(), code, text)
            return self._finish()
        if code // 100 not in (2, 3, 4, 5):
            raise UnexpectedReply(stage, f"{code} {text}")
        if stage == "MAIL":
            return self._mail_reply(code, text)
        if stage == "RCPT":
            return self._rcpt_reply(code, text)
        if stage == "DATA":
            return self._data_reply(code, text)
        return self._end_of_data_reply(code, text)

    def _mail_reply(self, code: int, text: str) -> Step:
        if code // 100 == 2:
            return self._next_command()
        if code // 100 == 3:
            raise UnexpectedReply("MAIL", f"{code} {text}")
        self._mail_refused = (code, text)
        self._decide(list(range(len(self.results))), code, text)
        # Pipelined, the peer still answers every RCPT and the DATA: wait for them all.
        return Step() if self._pipelined else self._finish()

    def _rcpt_reply(self, code: int, text: str) -> Step:
        index = self._answered - 2 - (self._commands[0][0] == "RSET")
        if self._mail_refused is not None:
            return Step()
        if code // 100 == 3:
            raise UnexpectedReply("RCPT", f"{code} {text}")
        if _is_too_many(code, text):
            self.too_many.append(index)
            code = TOO_MANY_RECIPIENTS
        self._decide([index], code, text)
        if self._pipelined:
            return Step()
        last = index == len(self.results) - 1
        if self.too_many and not last:
            # The peer's limit is reached: the rest would be refused the same way.
            rest = list(range(index + 1, len(self.results)))
            self.too_many += rest
            self._decide(rest, TOO_MANY_RECIPIENTS, text)
            self._written = self._answered = len(self._commands) - 1
            last = True
        if last and not self._accepted():
            return self._finish()
        return self._next_command()

    def _data_reply(self, code: int, text: str) -> Step:
        accepted = self._accepted()
        if self._mail_refused is not None or not accepted:
            if code == 354:
                # Pipelined DATA taken with nobody to deliver to: end it empty.
                self._in_content = self._empty = True
                return Step((b".",))
            return self._finish()
        if code == 354:
            self._in_content = True
            return Step(content=True)
        if code // 100 in (4, 5):
            self._decide(accepted, code, text)
            return self._finish()
        raise UnexpectedReply("DATA", f"{code} {text}")

    def _end_of_data_reply(self, code: int, text: str) -> Step:
        if self._empty:
            return self._finish()
        if code // 100 == 3:
            raise UnexpectedReply(END_OF_DATA, f"{code} {text}")
        self.delivered_any = code // 100 == 2
        self._decide(self._accepted(), code, text)
        return self._finish()


class MessageDelivery:
    """
    Every transaction of one message on one session, ending in one
    :class:`~hatwist.delivery.RecipientResult` per recipient, in ``rcpt_to`` order.

    Call :meth:`start`, then :meth:`on_reply` with every reply, doing what each
    :class:`Step` says, until :attr:`done`. An out-of-protocol reply raises
    :class:`~hatwist.delivery.UnexpectedReply` (the session must close).

    :param reset: RSET first (the session carried a message before).
    :param extensions: the peer's EHLO keywords (PIPELINING, SIZE, 8BITMIME, SMTPUTF8).
    """

    def __init__(
        self,
        envelope: Envelope,
        content: bytes,
        extensions: Mapping[str, str],
        *,
        reset: bool,
    ) -> None:
        self._envelope = envelope
        self._pipelined = "PIPELINING" in extensions
        self._results: list[RecipientResult | None] = [None] * len(envelope.rcpt_to)
        self.closing = False
        self._mail_line, refusal = _mail_line(envelope, content, extensions)
        self._transaction: _Transaction | None = None
        if refusal is not None:
            code, text = refusal
            self._results = [RecipientResult(a, code, text) for a in envelope.rcpt_to]
        else:
            self._transaction = self._new(tuple(range(len(envelope.rcpt_to))), reset=reset)

    def _new(self, positions: tuple[int, ...], *, reset: bool) -> _Transaction:
        return _Transaction(
            self._envelope, positions, self._mail_line, pipelined=self._pipelined, reset=reset
        )

    @property
    def done(self) -> bool:
        return self._transaction is None

    @property
    def stage(self) -> str:
        """The command whose reply is due (``"idle"`` once done)."""
        return self._transaction.stage if self._transaction is not None else "idle"

    @property
    def results(self) -> tuple[RecipientResult, ...]:
        """Every recipient's result; only complete once :attr:`done`."""
        if not self.done:
            raise RuntimeError("results before the message is done")
        return tuple(r for r in self._results if r is not None)

    def start(self) -> Step:
        return self._transaction.start() if self._transaction is not None else Step()

    def on_reply(self, code: int, text: str) -> Step:
        tx = self._transaction
        if tx is None:
            raise RuntimeError("reply after the message is done")
        step = tx.on_reply(code, text)
        if not tx.done:
            return step
        for position, result in zip(tx.positions, tx.results, strict=True):
            self._results[position] = result
        self._transaction = None
        self.closing = tx.closing
        if tx.too_many and tx.delivered_any and not tx.closing:
            # The peer took the message for some: the rest go in a further transaction.
            # After a completed DATA the peer is reset already, so no RSET.
            self._transaction = self._new(tuple(tx.positions[i] for i in tx.too_many), reset=False)
            return self._transaction.start()
        return step

    def interrupted(self, reason: str) -> tuple[RecipientResult, ...] | None:
        """
        When the session breaks mid-message: the results to report anyway, because an
        earlier transaction already delivered to some recipients (the rest get a temporary
        result naming ``reason``). ``None`` when no recipient was decided by the peer:
        then the whole message failed with the session, and may go elsewhere.
        """
        if not any(r is not None and r.kind == "delivered" for r in self._results):
            return None
        cut_short = set(self._transaction.positions if self._transaction is not None else ())
        return tuple(
            RecipientResult(a, 451, f"4.4.2 {reason}") if r is None or i in cut_short else r
            for i, (a, r) in enumerate(zip(self._envelope.rcpt_to, self._results, strict=True))
        )


def _mail_line(
    envelope: Envelope, content: bytes, extensions: Mapping[str, str]
) -> tuple[bytes, tuple[int, str] | None]:
    """The MAIL FROM line, or the local refusal that decides every recipient unsent."""
    params = []
    if envelope.needs_smtputf8:
        if "SMTPUTF8" not in extensions:
            return b"", (553, "5.6.7 (local) the peer does not offer SMTPUTF8")
        params.append(b"SMTPUTF8")
    if "SIZE" in extensions:
        limit = extensions["SIZE"]
        if limit.isdigit() and 0 < int(limit) < len(content):
            return b"", (
                552,
                f"5.3.4 (local) message of {len(content)} bytes exceeds "
                f"the peer's SIZE limit of {int(limit)}",
            )
        params.append(b"SIZE=%d" % len(content))
    if "8BITMIME" in extensions and not content.isascii():
        params.append(b"BODY=8BITMIME")
    line = b"MAIL FROM:<" + envelope.mail_from.encode("utf-8") + b">"
    return b" ".join([line, *params]), None
