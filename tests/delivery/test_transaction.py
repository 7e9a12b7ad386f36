"""Tests for hatwist.delivery._transaction: reply order and meaning, with no socket.

The wire behaviour is pinned against real peers in test_client.py; these pin the cases
a well-behaved peer rarely produces.
"""

from __future__ import annotations

import pytest

from hatwist.delivery import Envelope, UnexpectedReply
from hatwist.delivery._transaction import MessageDelivery, Step

PIPELINING = {"PIPELINING": ""}


def _codes(delivery):
    return [(r.address, r.code, r.kind) for r in delivery.results]


def test_pipelined_group_is_one_write_with_rset_first_on_reuse():
    delivery = MessageDelivery(Envelope("a@x", ["b@x", "c@x"]), b"hi", PIPELINING, reset=True)
    assert delivery.start() == Step(
        (b"RSET", b"MAIL FROM:<a@x>", b"RCPT TO:<b@x>", b"RCPT TO:<c@x>", b"DATA")
    )
    assert delivery.stage == "RSET"
    for code, stage in [(250, "MAIL"), (250, "RCPT"), (250, "RCPT"), (250, "DATA")]:
        assert delivery.on_reply(code, "ok") == Step()
        assert delivery.stage == stage
    assert delivery.on_reply(354, "go") == Step(content=True)
    assert delivery.stage == "end of data"
    delivery.on_reply(250, "2.0.0 queued")
    assert delivery.done
    assert _codes(delivery) == [("b@x", 250, "delivered"), ("c@x", 250, "delivered")]


def test_pipelined_data_accepted_with_nobody_to_deliver_to_gets_a_lone_dot():
    delivery = MessageDelivery(Envelope("a@x", ["b@x"]), b"hi", PIPELINING, reset=False)
    delivery.start()
    delivery.on_reply(250, "ok")
    delivery.on_reply(550, "5.1.1 no")
    assert delivery.on_reply(354, "go (a broken peer)") == Step((b".",))
    assert not delivery.done
    delivery.on_reply(250, "empty message taken")
    assert _codes(delivery) == [("b@x", 550, "permanent")]


def test_552_with_x53_is_too_many_recipients_and_temporary():
    delivery = MessageDelivery(Envelope("a@x", ["b@x", "c@x"]), b"hi", PIPELINING, reset=False)
    delivery.start()
    for code, text in [(250, "ok"), (250, "ok"), (552, "5.5.3 too many recipients")]:
        delivery.on_reply(code, text)
    delivery.on_reply(354, "go")
    # The further transaction starts right after the first one's final reply, with no RSET.
    assert delivery.on_reply(250, "queued") == Step((b"MAIL FROM:<a@x>", b"RCPT TO:<c@x>", b"DATA"))
    assert delivery.stage == "MAIL"


def test_no_further_transaction_when_the_first_delivered_to_nobody():
    delivery = MessageDelivery(Envelope("a@x", ["b@x", "c@x"]), b"hi", PIPELINING, reset=False)
    delivery.start()
    for code, text in [(250, "ok"), (250, "ok"), (452, "4.5.3 too many"), (354, "go")]:
        delivery.on_reply(code, text)
    delivery.on_reply(451, "4.3.0 not now")
    assert delivery.done
    assert _codes(delivery) == [("b@x", 451, "temporary"), ("c@x", 452, "temporary")]


def test_a_452_without_the_too_many_status_is_just_temporary():
    delivery = MessageDelivery(Envelope("a@x", ["b@x", "c@x"]), b"hi", PIPELINING, reset=False)
    delivery.start()
    for code, text in [(250, "ok"), (250, "ok"), (452, "4.2.2 mailbox full"), (354, "go")]:
        delivery.on_reply(code, text)
    assert delivery.on_reply(250, "queued") == Step()
    assert delivery.done
    assert _codes(delivery)[1] == ("c@x", 452, "temporary")


def test_closing_reply_after_a_refused_sender_keeps_the_senders_answer():
    delivery = MessageDelivery(Envelope("a@x", ["b@x"]), b"hi", PIPELINING, reset=False)
    delivery.start()
    delivery.on_reply(553, "5.1.8 bad sender")
    delivery.on_reply(421, "4.7.0 bye")
    assert delivery.done and delivery.closing
    assert _codes(delivery) == [("b@x", 553, "permanent")]


@pytest.mark.parametrize(
    ("replies", "stage"),
    [
        ([(354, "what")], "MAIL"),
        ([(250, "ok"), (354, "what")], "RCPT"),
        ([(250, "ok"), (250, "ok"), (250, "not 354")], "DATA"),
        ([(250, "ok"), (250, "ok"), (354, "go"), (354, "again")], "end of data"),
        ([(199, "odd")], "MAIL"),
    ],
)
def test_replies_outside_smtp_name_their_stage(replies, stage):
    delivery = MessageDelivery(Envelope("a@x", ["b@x"]), b"hi", {}, reset=False)
    delivery.start()
    *fine, (code, text) = replies
    for reply in fine:
        delivery.on_reply(*reply)
    with pytest.raises(UnexpectedReply) as caught:
        delivery.on_reply(code, text)
    assert caught.value.stage == stage


def test_refused_rset_is_unexpected():
    delivery = MessageDelivery(Envelope("a@x", ["b@x"]), b"hi", PIPELINING, reset=True)
    delivery.start()
    with pytest.raises(UnexpectedReply) as caught:
        delivery.on_reply(421, "4.4.2 idle too long")
    assert caught.value.stage == "RSET"


def test_nothing_to_interrupt_before_a_recipient_was_delivered():
    delivery = MessageDelivery(Envelope("a@x", ["b@x"]), b"hi", PIPELINING, reset=False)
    delivery.start()
    delivery.on_reply(250, "ok")
    assert delivery.interrupted("connection lost during RCPT") is None
