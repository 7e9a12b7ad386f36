# -*- test-case-name: tests.delivery.test_client_values -*-
"""
What goes into one SMTP transaction and what comes out of it, per recipient; and the
same for one delivery attempt (:class:`OutboundMessage`, :class:`AttemptResult`, which
:mod:`hatwist.delivery.attempt` exports).

Pure values. Addresses are checked here, once, because they are written into command
lines verbatim: a CR or LF in an address would end the command early and let the rest
run as SMTP commands, and ``<``/``>`` would escape the path's brackets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import attrs

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

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


@attrs.frozen
class OutboundMessage:
    """
    One message for the recipients of one domain, sent on behalf of ``binding``.

    The content is ``content``, or, when ``load_content`` is set, what it fires with:
    it is called once per session that is ready to take the message (after its banner,
    EHLO and STARTTLS), and the bytes are let go of when that session is done with them.
    A large message then costs memory only while it is being sent, not for the whole walk.
    """

    id: str
    binding: str
    domain: str
    envelope: Envelope
    content: bytes = b""
    load_content: Callable[[], Deferred[bytes] | bytes] | None = attrs.field(
        default=None, eq=False
    )
    group: str | None = None
    """The binding_group the message was sent to (``X-Binding-Group``), which chose
    ``binding`` for this attempt; None for mail sent to a binding."""


@attrs.frozen
class AttemptResult:
    """
    What one attempt did: a result per recipient and where the attempt ended.

    ``route``, ``mx_host`` and ``mx_address`` name the session that answered (or the last
    one tried; ``None`` when no MX was reached). ``error`` is set when no session answered
    for the recipients: the reason they all got the same result.
    """

    message_id: str
    recipients: tuple[RecipientResult, ...]
    route: str | None
    mx_host: str | None
    mx_address: str | None
    duration: float
    error: str | None = None
    waiting_for_proxy: bool = False
    """True when every MX address was skipped only because no proxy was plumbed."""
    no_greeting: tuple[str, ...] = ()
    """Proxy servers (as configured) that connected but sent no 220 banner in this attempt:
    an unusable source IP or an unreachable MX behind HAProxy."""
    tls_skipped: str | None = None
    """Why the session that answered (or the last one tried) was plaintext although the
    MX offered STARTTLS: it refused STARTTLS, or STARTTLS failed and ``tls = ifavailable``
    retried without it. ``None`` when TLS was used, not offered, or not wanted."""
    mx_reached: bool = False
    """Some MX of the domain greeted a session in this attempt (even if the session then
    broke, or refused the message): the destination answers. ``False`` when no address
    tried gave a TCP session and a greeting (or the MX lookup failed), the case in which
    the scheduler pauses the domain's queue."""

    def addresses(self, kind: str) -> tuple[str, ...]:
        """The recipients whose result is ``"delivered"``, ``"temporary"`` or ``"permanent"``."""
        return tuple(r.address for r in self.recipients if r.kind == kind)
