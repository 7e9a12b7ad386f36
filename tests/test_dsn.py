"""Tests for hatwist.dsn: RFC 3464 reports, parsed back with the stdlib email package."""

from __future__ import annotations

import email
import email.policy
from email.utils import parsedate_to_datetime

import attrs
import pytest

from hatwist.dsn import (
    DELAYED,
    bounce_envelope,
    build_dsn,
    should_bounce,
    status_for,
)
from hatwist.spool import RecipientState, SpooledMessage

ARRIVED = 1_700_000_000.0
NOW = ARRIVED + 5 * 86400
ORIGINAL = SpooledMessage(
    id="0609f2b2f6f800-0123456789", binding="b1", mail_from="sender@example.org",
    recipients=(RecipientState("a@example.net"), RecipientState("b@example.com")),
    received_at=ARRIVED, attempts=7, next_attempt_at=NOW, size=100,
)
HEADERS = (b"From: Sender <sender@example.org>\r\nTo: a@example.net\r\n"
           b"Subject: quarterly report\r\nMessage-ID: <orig@example.org>\r\n\r\n"
           b"the body must not be quoted\r\n")


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def dsn(**overrides) -> bytes:
    arguments = dict(
        reporting_mta="relay.example.com", original=ORIGINAL,
        failed=[("a@example.net", 550, "5.1.1 <a@example.net>: user unknown"),
                ("b@example.com", 451, "4.7.1 try later\r\n(greylisted)")],
        original_headers=HEADERS, arrival_date=ARRIVED, date=NOW,
    )
    arguments.update(overrides)
    return build_dsn(**arguments)


def test_bounce_is_a_multipart_report_of_three_parts():
    message = parse(dsn())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in message.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert message["To"].addresses[0].addr_spec == "sender@example.org"
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@relay.example.com"
    assert message["Auto-Submitted"] == "auto-replied"
    assert parsedate_to_datetime(message["Date"]).timestamp() == NOW
    assert not message.defects


def test_report_names_each_recipient_with_action_status_and_diagnostic():
    report = list(parse(dsn()).iter_parts())[1]
    per_message, *per_recipient = report.get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.example.com"
    assert parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVED
    assert [(r["Final-Recipient"], r["Action"], r["Status"], r["Diagnostic-Code"])
            for r in per_recipient] == [
        ("rfc822; a@example.net", "failed", "5.1.1",
         "smtp; 550 5.1.1 <a@example.net>: user unknown"),
        ("rfc822; b@example.com", "failed", "5.4.7", "smtp; 451 4.7.1 try later (greylisted)"),
    ]


def test_recipient_that_failed_after_a_temporary_reply_expired_and_keeps_the_reply():
    """A failed recipient whose last reply was 4xx ran out of time: the status says
    expired (5.4.7, never a 4.x.x under Action: failed) and the program-readable
    Diagnostic-Code still quotes the last reply, as the human text does."""
    message = parse(dsn(failed=[("b@example.com", 451, "4.4.1 mx busy")]))
    human, report, _ = message.iter_parts()
    [recipient] = report.get_payload()[1:]
    assert (recipient["Action"], recipient["Status"], recipient["Diagnostic-Code"]) == (
        "failed", "5.4.7", "smtp; 451 4.4.1 mx busy")
    assert "<b@example.com>: delivery time expired; last error: 451 4.4.1 mx busy" in (
        human.get_content())


def test_original_headers_are_returned_without_the_body():
    headers = list(parse(dsn()).iter_parts())[2]
    returned = headers.get_payload(decode=True)
    assert b"Subject: quarterly report" in returned
    assert b"body" not in returned


def test_eight_bit_original_headers_are_encoded_so_the_dsn_stays_seven_bit():
    raw = dsn(original_headers=b"Subject: caf\xc3\xa9\r\nX-Y: =z\r\n\r\nbody")
    assert max(raw) < 0x80
    returned = list(parse(raw).iter_parts())[2].get_payload(decode=True)
    assert returned == b"Subject: caf\xc3\xa9\r\nX-Y: =z\r\n"


def test_delay_notice_says_delayed_and_expiry_without_a_reply_says_x47():
    message = parse(dsn(action=DELAYED, failed=[("a@example.net", None, None)]))
    assert message["Subject"].startswith("Delayed")
    recipient = list(message.iter_parts())[1].get_payload()[1]
    assert (recipient["Action"], recipient["Status"]) == ("delayed", "4.4.7")
    assert recipient["Diagnostic-Code"] is None


def test_boundary_never_occurs_inside_a_part():
    first = dsn()
    boundary = parse(first).get_boundary()
    hostile = dsn(original_headers=f"--{boundary}: x\r\n\r\n".encode())
    message = parse(hostile)
    assert message.get_boundary() != boundary
    assert len(list(message.iter_parts())) == 3


@pytest.mark.parametrize("code, diagnostic, action, status", [
    (550, "5.7.1 relaying denied", "failed", "5.7.1"),
    (550, "relaying denied", "failed", "5.0.0"),
    (550, "4.7.1 mismatched class", "failed", "5.0.0"),
    (421, "4.4.2 timeout", "delayed", "4.4.2"),
    (None, "connection refused", "failed", "5.4.7"),
    (451, "4.4.1 mx busy", "failed", "5.4.7"),
    (450, "mailbox busy", "failed", "5.4.7"),
    (None, "5.1.10 null MX", "failed", "5.1.10"),
    (554, "5.1.10 null MX", "failed", "5.1.10"),
])
def test_status_comes_from_the_servers_enhanced_code_of_the_same_class(
        code, diagnostic, action, status):
    assert status_for(code, diagnostic, action) == status


@pytest.mark.parametrize("sender, bounces", [
    ("", False), ("<>", False), (" ", False), ("sender@example.org", True)])
def test_null_sender_never_bounces(sender, bounces):
    assert should_bounce(sender) is bounces


def test_bounce_goes_from_the_null_path_to_the_original_sender():
    envelope = bounce_envelope(ORIGINAL)
    assert (envelope.mail_from, envelope.rcpt_to) == ("", ("sender@example.org",))
    with pytest.raises(ValueError, match="null sender"):
        dsn(original=attrs.evolve(ORIGINAL, mail_from=""))


def test_lines_end_in_crlf_only():
    raw = dsn()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
