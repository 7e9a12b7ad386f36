"""Tests for hatwist.inbound._syntax: paths, parameters, addresses and X-Binding (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from hatwist.inbound import BindingHeaderError, split_binding
from hatwist.inbound._syntax import (
    address_problem,
    check_mail_parameters,
    is_mailbox,
    is_postmaster,
    parse_path,
    received_field,
)

LIMIT = 10_000


def test_split_binding_keeps_everything_but_the_field():
    content = b"A: 1\r\nX-BINDING:\r\n\tb2 \r\nB: 2\r\n\r\nX-Binding: body\r\n"
    assert split_binding(content) == ("b2", b"A: 1\r\nB: 2\r\n\r\nX-Binding: body\r\n",
                                      0)
    assert split_binding(b"no header here\r\nX-Binding: b\r\n") == (
        None, b"no header here\r\nX-Binding: b\r\n", 0)


@pytest.mark.parametrize("argument, parsed", [
    ("FROM:<a@b.test>", ("a@b.test", [])),
    ("from: <a@b.test> SIZE=10 BODY=8BITMIME", ("a@b.test", ["SIZE=10", "BODY=8BITMIME"])),
    ("FROM:<>", ("", [])),
    ("FROM:<@relay.test,@r2.test:a@b.test>", ("a@b.test", [])),  # source route dropped
    ("FROM:a@b.test", None),
    ("FROM:<a b@c.test>", None),
    ("TO:<a@b.test>", None),
])
def test_paths_are_parsed_strictly(argument, parsed):
    assert parse_path("FROM:", argument) == parsed


@pytest.mark.parametrize("params, refusal", [
    ([], None),
    (["SIZE=10000", "body=7bit"], None),
    (["SIZE=10001"], (552, "5.3.4")),
    (["SIZE=big"], (555, "5.5.4")),
    (["BODY=BINARYMIME"], (555, "5.5.4")),  # CHUNKING is not offered
    (["SMTPUTF8"], None),  # RFC 6531, advertised
    (["SMTPUTF8=yes"], (555, "5.5.4")),  # it takes no value
    (["RET=HDRS"], (555, "5.5.4")),  # nor DSN
])
def test_mail_accepts_only_the_parameters_ehlo_advertises(params, refusal):
    found = check_mail_parameters(params, LIMIT)
    assert (found and (found.code, found.enhanced)) == refusal


@pytest.mark.parametrize("address, ok", [
    ("a@b.test", True), ("a@b@c.test", False), ("@b.test", False), ("a@", False),
    ("postmaster", False)])
def test_a_recipient_is_a_local_part_at_a_domain(address, ok):
    assert is_mailbox(address) is ok


@pytest.mark.parametrize("peer, literal", [
    (ipaddress.ip_address("192.0.2.7"), "[192.0.2.7]"),
    (ipaddress.ip_address("2001:db8::7"), "[IPv6:2001:db8::7]"),  # RFC 5321 section 4.1.3
    (None, "[unknown]"),
])
def test_received_field_names_the_peer_as_an_address_literal(peer, literal):
    field = received_field(helo="client.test", peer=peer, hostname="relay.test", date=0)
    assert field.startswith(f"Received: from client.test ({literal})\r\n".encode())
    assert field.endswith(b"\t" + b"Thu, 01 Jan 1970 00:00:00 -0000\r\n")




@pytest.mark.parametrize("address", ["postmaster", "Postmaster", "POSTMASTER"])
def test_bare_postmaster_is_recognised_case_insensitively(address):
    assert is_postmaster(address)
    assert not is_postmaster("postmaster@example.net")


LABEL_64 = "a" * 64


@pytest.mark.parametrize("address, problem", [
    ("a@example.net", None),
    ("a@example.net.", None),  # a trailing dot is the root, not an empty label
    ("a@[192.0.2.1]", None),  # address literals go on as they are
    ("a\x00b@example.net", "control character in address"),
    ("a@exa\x07mple.net", "control character in address"),
    ("a@example.net\x7f", "control character in address"),
    ("x" * 65 + "@example.net", "local part over 64 octets"),
    ("x" * 64 + "@example.net", None),
    (f"a@{LABEL_64}.example.net", "DNS label over 63 octets"),
    (f"a@{'a' * 63}.example.net", None),
    ("a@" + ".".join(["b" * 50] * 6), "domain over 255 octets"),
    ("a@example..net", "empty DNS label"),
    ("a@.example.net", "empty DNS label"),
    ("a@[192.0.2.1", "unterminated address literal"),
    ("a@" + "b" * 300, "domain over 255 octets"),
    ("x" * 10 + "@" + ".".join(["b" * 62] * 3 + ["c" * 61]), "path over 256 octets"),
    ("x" * 10 + "@" + ".".join(["b" * 62] * 3 + ["c" * 51]), None),
])
def test_addresses_that_could_never_be_delivered_are_named(address, problem):
    assert address_problem(address) == problem


@pytest.mark.parametrize("header", [
    b"X-Binding: WARM\r\n",
    b"X-Binding: Warm\r\n",
    b"x-binding: warm\r\n",
    b"X-Binding : warm\r\n",  # RFC 5322 section 4.5.8: WSP before the colon
    b"X-Binding\t:\twarm\r\n",
])
def test_the_binding_is_canonical_and_found_however_it_was_written(header):
    binding, content, _ = split_binding(b"Subject: a\r\n" + header + b"\r\nbody\r\n")
    assert binding == "warm"
    assert content == b"Subject: a\r\n\r\nbody\r\n"


def test_x_binding_after_an_mbox_from_line_is_found():
    mbox = b"From sender@example.org Tue Dec  1 20:00:00 2026\r\n"
    content = mbox + b"X-Binding: b2\r\nA: 1\r\n\r\nb\r\n"
    assert split_binding(content) == ("b2", mbox + b"A: 1\r\n\r\nb\r\n", 0)


@pytest.mark.parametrize("value", [b"two words", b"caf\xe9", b"a/b", b"x" * 65])
def test_a_malformed_binding_name_is_refused_not_defaulted(value):
    with pytest.raises(BindingHeaderError, match="malformed X-Binding header"):
        split_binding(b"X-Binding: " + value + b"\r\n\r\nbody\r\n")


def test_x_binding_group_names_the_groups_route_and_is_removed():
    content = b"Subject: a\r\nX-Binding-Group:  Pool\r\n\r\nX-Binding-Group: body\r\n"
    assert split_binding(content) == (
        "group:pool", b"Subject: a\r\n\r\nX-Binding-Group: body\r\n", 0)


@pytest.mark.parametrize("head, problem", [
    (b"X-Binding: b1\r\nX-Binding-Group: pool\r\n", "both X-Binding and X-Binding-Group"),
    (b"X-Binding-Group: pool\r\nx-binding-group: pool\r\n",
     "more than one X-Binding-Group header"),
    (b"X-Binding-Group:\r\n", "empty X-Binding-Group header"),
    (b"X-Binding-Group: group:pool\r\n", 'malformed X-Binding-Group header "group:pool"'),
])
def test_an_unusable_group_header_is_refused_naming_the_problem(head, problem):
    with pytest.raises(BindingHeaderError, match=problem):
        split_binding(head + b"\r\nbody\r\n")


def test_a_binding_name_cannot_smuggle_a_group_route():
    with pytest.raises(BindingHeaderError, match="malformed X-Binding header"):
        split_binding(b"X-Binding: group:pool\r\n\r\nbody\r\n")
