# -*- test-case-name: tests.test_spool -*-
"""
What the spool knows about a message, and how that is written down.

The envelope and per-recipient state are a frozen value (L{SpooledMessage}); the
scheduler changes state by making a new value (L{attrs.evolve}) and handing it to
L{Spool.update}.  The JSON encoding is versioned and decoded strictly: anything
unexpected is L{CorruptEntry}, so recovery can move it aside instead of guessing.
Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Literal

import attrs

from ._errors import CorruptEntry

FORMAT_VERSION = 1
PENDING: Literal["pending"] = "pending"
DELIVERED: Literal["delivered"] = "delivered"
FAILED: Literal["failed"] = "failed"
Status = Literal["pending", "delivered", "failed"]
STATUSES = (PENDING, DELIVERED, FAILED)

ID_PATTERN = re.compile(r"\A[0-9a-f]{14}-[0-9a-f]{10}\Z")
"""Fourteen hex digits of microseconds since the epoch (fixed width, so ids sort
by time as strings until the year 2540), a dash, forty random bits."""


@attrs.frozen
class RecipientState:
    """Where delivery to one envelope recipient stands."""

    address: str
    status: Status = PENDING
    code: int | None = None
    """The last SMTP reply code seen for this recipient, if any."""
    reason: str | None = None
    """The last reply text (or local reason) for this recipient, if any."""
    attempts: int = 0
    bounced: bool = False
    """A DSN reporting this failed recipient is spooled (so it is not reported twice)."""


@attrs.frozen
class SpooledMessage:
    """A message's envelope and delivery state; the content lives beside it."""

    id: str
    binding: str
    mail_from: str
    """The reverse-path without angle brackets; C{""} is the null sender."""
    recipients: tuple[RecipientState, ...]
    received_at: float
    attempts: int
    next_attempt_at: float
    size: int
    """Length of the content in bytes, checked against the file at recovery."""
    smtputf8: bool = False
    """Submitted with MAIL FROM:<...> SMTPUTF8 (RFC 6531): delivered only to an MX
    that offers SMTPUTF8.  Defaulted, so state files written before it still load."""
    held_at: float | None = None
    """When the operator held it (``hatwist queue hold``); None: not held."""
    held_for: float = 0.0
    """Seconds it spent held before its last release: its expiry is that much later."""
    delay_warned: bool = False
    """A "delayed" DSN (``delay_warning_time``) is spooled for it: one per message."""

    def pending(self) -> tuple[RecipientState, ...]:
        """The recipients still waiting for delivery."""
        return tuple(r for r in self.recipients if r.status == PENDING)


def make_message_id(micros: int, entropy: int) -> str:
    """A file-name-safe id that sorts by C{micros} (microseconds since the epoch)."""
    return f"{micros:014x}-{entropy & 0xFFFFFFFFFF:010x}"


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def encode(message: SpooledMessage) -> bytes:
    """The JSON state of C{message} (the old layout's state file, the database's
    state column: one format, so the import copies it unchanged)."""
    body = {
        "attempts": message.attempts, "binding": message.binding, "id": message.id,
        "mail_from": message.mail_from, "next_attempt_at": message.next_attempt_at,
        "received_at": message.received_at, "size": message.size,
        "recipients": [
            {"address": r.address, "attempts": r.attempts, "code": r.code,
             "reason": r.reason, "status": r.status, **_BOUNCED[r.bounced]}
            for r in message.recipients
        ],
        "version": FORMAT_VERSION,
    }
    if message.smtputf8:  # written only when set: most messages need no SMTPUTF8
        body["smtputf8"] = True
    # Written only when set, so the state of mail never held stays as it was.
    if message.held_at is not None:
        body["held_at"] = message.held_at
    if message.held_for:
        body["held_for"] = message.held_for
    # The scheduler's DSN marks are written only when set: a state without them reads
    # as it always did.
    if message.delay_warned:
        body["delay_warned"] = True
    return _ENCODER.encode(body).encode("utf-8")


_BOUNCED: dict[bool, dict[str, bool]] = {False: {}, True: {"bounced": True}}


class Strings(dict):
    """One copy of each repeated string or number (binding, sender, reply text and
    code) across the messages of one recovery: a million queued messages share
    them instead of each holding its own."""

    def share(self, value: object) -> object:
        if value is None:
            return None
        return self.setdefault(value, value)


_STATUS = {s: s for s in STATUSES}


def decode(data: bytes, strings: Strings | None = None) -> SpooledMessage:
    """Read state written by L{encode}; raise L{CorruptEntry} otherwise."""
    share = (strings if strings is not None else Strings()).share
    try:
        body = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
        if body.pop("version") != FORMAT_VERSION:
            raise CorruptEntry("unknown state file version")
        recipients = tuple(_recipient(r, share) for r in body.pop("recipients"))
        body["binding"] = share(body["binding"])
        body["mail_from"] = share(body["mail_from"])
        message = SpooledMessage(recipients=recipients, **body)
    except CorruptEntry:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CorruptEntry(f"unreadable state file: {e}") from e
    _check(message)
    return message


def _recipient(body: dict, share) -> RecipientState:
    status = _STATUS.get(body.get("status"))  # type: ignore[arg-type]
    if status is None:
        raise CorruptEntry(f"unknown recipient status {body.get('status')!r}")
    body["status"] = status
    body["reason"] = share(body.get("reason"))
    code = body.get("code")
    if type(code) is int:
        body["code"] = share(code)
    return RecipientState(**body)


def _check(message: SpooledMessage) -> None:
    """Type-check what JSON cannot: attrs does not enforce annotations."""
    _types(
        (message.id, str), (message.binding, str), (message.mail_from, str),
        (message.received_at, (int, float)), (message.next_attempt_at, (int, float)),
        (message.attempts, int), (message.size, int), (message.held_for, (int, float)),
        (message.held_at, (int, float, type(None))),
    )
    if not isinstance(message.smtputf8, bool):
        raise CorruptEntry(f"field has the wrong type: {message.smtputf8!r}")
    if not ID_PATTERN.match(message.id):
        raise CorruptEntry(f"bad message id {message.id!r}")
    if not message.recipients:
        raise CorruptEntry("no recipients")
    for r in message.recipients:
        _types((r.address, str), (r.attempts, int), (r.code, (int, type(None))),
               (r.reason, (str, type(None))))
    if not all(type(flag) is bool
               for flag in (message.delay_warned, *(r.bounced for r in message.recipients))):
        raise CorruptEntry("a DSN mark (bounced, delay_warned) is not true or false")


def _types(*pairs: tuple[object, type | tuple[type, ...]]) -> None:
    for value, kind in pairs:
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CorruptEntry(f"field has the wrong type: {value!r}")


def new_recipients(addresses: Iterable[str]) -> tuple[RecipientState, ...]:
    """Fresh pending state for each envelope recipient."""
    return tuple(RecipientState(address=a) for a in addresses)
