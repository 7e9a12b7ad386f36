"""Tests for the values and errors of hatwist.delivery (pure: no reactor, no sockets)."""

from __future__ import annotations

import pytest

from hatwist.delivery import (
    ConnectFailed,
    ConnectionLostDuringSession,
    Envelope,
    GreetingRejected,
    NoGreeting,
    RecipientResult,
    SessionError,
    SessionTimeout,
    TLSFailed,
    TLSUnavailable,
    UnexpectedReply,
)
from hatwist.delivery._errors import starttls_failed
from hatwist.delivery._protocol import parse_extensions


def test_envelope_keeps_addresses_as_given():
    envelope = Envelope('"john doe"@example.test', ["postmaster", "b@x"])
    assert envelope.mail_from == '"john doe"@example.test'
    assert envelope.rcpt_to == ("postmaster", "b@x")


def test_null_sender_is_allowed():
    assert Envelope("", ["b@x"]).mail_from == ""


@pytest.mark.parametrize(
    "address",
    ["a@x\r\nRSET", "a@x\nDATA", "a@x\r", "a@x>", "<a@x", "a\x00@x", "a\x7f@x"],
)
def test_addresses_that_would_break_the_command_line_are_refused(address):
    with pytest.raises(ValueError, match="forbidden"):
        Envelope(address, ["b@x"])
    with pytest.raises(ValueError, match="forbidden"):
        Envelope("a@x", ["b@x", address])


@pytest.mark.parametrize("recipients", [[], [""]])
def test_envelope_needs_real_recipients(recipients):
    with pytest.raises(ValueError):
        Envelope("a@x", recipients)


def test_non_ascii_address_needs_smtputf8():
    assert Envelope("a@x", ["jos\u00e9@x"]).needs_smtputf8
    assert not Envelope("a@x", ["jose@x"]).needs_smtputf8


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (250, "delivered"),
        (251, "delivered"),
        (421, "temporary"),
        (452, "temporary"),
        (550, "permanent"),
        (554, "permanent"),
    ],
)
def test_recipient_kind_follows_the_reply_class(code, kind):
    assert RecipientResult("b@x", code, "text").kind == kind


@pytest.mark.parametrize("code", [-1, 0, 199, 354, 600, 999])
def test_recipient_result_needs_a_final_reply_code(code):
    with pytest.raises(ValueError):
        RecipientResult("b@x", code, "text")


@pytest.mark.parametrize(
    ("error", "temporary"),
    [
        (ConnectFailed("refused"), True),
        (NoGreeting("EOF"), True),
        (GreetingRejected(554, "no"), False),
        (GreetingRejected(421, "busy"), True),
        (TLSUnavailable("not offered"), True),
        (TLSFailed("bad cert"), True),
        (SessionTimeout("DATA", 60), True),
        (ConnectionLostDuringSession("DATA"), True),
        (UnexpectedReply("EHLO", "garbage"), True),
    ],
)
def test_every_session_error_says_whether_to_retry(error, temporary):
    assert isinstance(error, SessionError)
    assert error.temporary is temporary
    assert str(error) == error.reason and error.reason


def test_stage_errors_name_their_stage():
    assert SessionTimeout("MAIL", 30).reason == "no reply to MAIL within 30s"
    assert ConnectionLostDuringSession("DATA", "reset").reason == (
        "connection lost during DATA: reset"
    )
    assert GreetingRejected(554, "go away", stage="EHLO").reason == "EHLO refused: 554 go away"


@pytest.mark.parametrize(
    ("error", "failed"),
    [
        (TLSFailed("TLS handshake failed: connection reset"), True),
        (SessionTimeout("STARTTLS", 30), True),
        (ConnectionLostDuringSession("STARTTLS", "reset"), True),
        (GreetingRejected(421, "4.3.2 shutting down", stage="STARTTLS"), False),
        (SessionTimeout("EHLO", 30), False),
        (ConnectionLostDuringSession("MAIL", "reset"), False),
        (NoGreeting("EOF"), False),
        (ConnectFailed("refused"), False),
        (TLSUnavailable("not offered"), False),
        (ValueError("not a session error"), False),
    ],
    ids=[
        "handshake",
        "stalled",
        "gone",
        "421",
        "ehlo timeout",
        "lost at MAIL",
        "no greeting",
        "connect",
        "not offered",
        "other",
    ],
)
def test_starttls_failed_means_the_peer_offered_tls_and_could_not_do_it(error, failed):
    assert starttls_failed(error) is failed


def test_ehlo_keywords_skip_the_greeting_line_and_are_upper_cased():
    reply = b"mx.test Hello relay\nsize 1000\nPIPELINING\nAUTH PLAIN LOGIN\n8bitmime"
    assert parse_extensions(reply) == {
        "SIZE": "1000",
        "PIPELINING": "",
        "AUTH": "PLAIN LOGIN",
        "8BITMIME": "",
    }
