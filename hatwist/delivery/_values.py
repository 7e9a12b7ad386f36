# -*- test-case-name: tests.delivery.test_client_values -*-
"""
What goes into one SMTP transaction and what comes out of it, per recipient.

Pure values. Addresses are checked here, once, because they are written into command
lines verbatim: a CR or LF in an address would end the command early and let the rest
run as SMTP commands, and ``<``/``>`` would escape the path's brackets.
"""

from __future__ import annotations

from typing import Literal

import attrs

#: What a reply code means for one recipient: 2xx, 4xx and 5xx respectively.
Kind = Literal["delivered", "temporary", "permanent"]

_KINDS: dict[int, Kind] = {2: "delivered", 4: "temporary", 5: "permanent"}

#: Characters that may never appear in an envelope address (controls, DEL, brackets).
_FORBIDDEN = frozenset(chr(c) for c in range(0x20)) | {"\x7f", "<", ">"}


def _check_address(value: str, *, allow_empty: bool, what: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{what} must not be empty")
    bad = _FORBIDDEN.intersection(value)
    if bad:
        raise ValueError(f"{what} {value!r} contains forbidden characters {sorted(bad)!r}")


def _check_sender(instance: object, attribute: attrs.Attribute, value: str) -> None:
    _check_address(value, allow_empty=True, what="mail_from")


def _check_recipients(instance: object, attribute: attrs.Attribute, value: tuple) -> None:
    if not value:
        raise ValueError("rcpt_to must name at least one recipient")
    for address in value:
        _check_address(address, allow_empty=False, what="recipient")


@attrs.frozen
class Envelope:
    """
    The SMTP envelope of one message: ``MAIL FROM`` and the ``RCPT TO`` list.

    ``mail_from`` may be ``""``: the null reverse-path ``<>`` that bounces travel with.
    Addresses are written as given inside ``<...>``; nothing is added or rewritten.
    """

    mail_from: str = attrs.field(validator=_check_sender)
    rcpt_to: tuple[str, ...] = attrs.field(converter=tuple, validator=_check_recipients)
    smtputf8: bool = False
    """Submitted with SMTPUTF8 (UTF-8 headers may need it even with ASCII addresses)."""

    @property
    def needs_smtputf8(self) -> bool:
        """True when the submitter asked for SMTPUTF8 or an address is not ASCII, so the
        peer must offer SMTPUTF8 (RFC 6531)."""
        return self.smtputf8 or not all(a.isascii() for a in (self.mail_from, *self.rcpt_to))


def _check_code(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value // 100 not in _KINDS or not 200 <= value <= 599:
        raise ValueError(f"a recipient's final reply code is 2xx, 4xx or 5xx, not {value!r}")


@attrs.frozen
class RecipientResult:
    """
    The final word on one recipient of one message: the reply code and text that decided it.

    That reply is the RCPT reply when the recipient was refused there; otherwise the reply
    to MAIL FROM (when the sender was refused), to DATA, or to the message's final dot.
    """

    address: str
    code: int = attrs.field(validator=_check_code)
    response: str

    @property
    def kind(self) -> Kind:
        """``"delivered"`` (2xx), ``"temporary"`` (4xx: try again later) or
        ``"permanent"`` (5xx: bounce)."""
        return _KINDS[self.code // 100]
