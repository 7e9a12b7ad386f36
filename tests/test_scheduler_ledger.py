"""
Tests for hatwist.scheduler._ledger: the per-queue depths kept as messages change, the
shared queue keys, and messages from disk sharing their common strings.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

from hatwist.scheduler._ledger import Ledger
from hatwist.spool import DELIVERED, PENDING, SpooledMessage
from hatwist.spool._values import decode, encode, new_recipients


def ledger() -> Ledger:
    spool = type("Spool", (), {"update": lambda self, m: defer.succeed(None)})()
    return Ledger(spool, task.Clock(), log=Logger, count_error=lambda: None,
                  track=lambda d: None)


def message(id_="00000000000001-0000000001", binding="b1",
            rcpt_to=("a@x.test", "b@X.test", "c@y.test")) -> SpooledMessage:
    return SpooledMessage(
        id=id_, binding=binding, mail_from="s@src.test", recipients=new_recipients(rcpt_to),
        received_at=1_000_000.0, attempts=0, next_attempt_at=1_000_000.0, size=10,
    )


def test_depths_follow_every_change_of_a_message():
    led = ledger()
    entry = led.add(message())
    assert led.depths() == {("b1", "x.test"): 2, ("b1", "y.test"): 1}
    assert [p.key for p in entry.parts] == [("b1", "x.test"), ("b1", "y.test")]
    first = attrs.evolve(entry.message.recipients[0], status=DELIVERED)
    led.change(entry, attrs.evolve(entry.message,
                                   recipients=(first, *entry.message.recipients[1:])))
    assert led.depths() == {("b1", "x.test"): 1, ("b1", "y.test"): 1}
    assert led.forget(entry)
    assert led.depths() == {}
    assert not led.forget(entry), "forgotten once"


def test_a_change_without_recount_leaves_the_depths():
    led = ledger()
    entry = led.add(message())
    led.change(entry, attrs.evolve(entry.message, next_attempt_at=2e6), recount=False)
    assert led.depths() == {("b1", "x.test"): 2, ("b1", "y.test"): 1}
    assert entry.message.next_attempt_at == 2e6


def test_the_parts_of_one_queue_share_one_key():
    led = ledger()
    one = led.add(message("00000000000001-0000000001", rcpt_to=("a@x.test",)))
    two = led.add(message("00000000000002-0000000001", rcpt_to=("b@X.test",)))
    assert one.parts[0].key is two.parts[0].key


def test_a_message_decoded_from_disk_shares_binding_status_and_time():
    led = ledger()
    original = message()
    decoded = decode(encode(original))
    assert decoded.binding is not original.binding  # as a recovery reads it
    entry = led.add(decoded)
    assert entry.message == original
    assert entry.message.binding is led.add(decode(encode(
        message("00000000000002-0000000001")))).message.binding
    assert all(r.status is PENDING for r in entry.message.recipients)
    assert entry.message.next_attempt_at is entry.message.received_at


def test_a_message_that_shares_them_already_is_kept_as_it_is():
    led = ledger()
    fresh = message()
    assert led.add(fresh).message is fresh


def test_settling_recipients_lowers_only_their_queue_and_drops_it_at_zero():
    led = ledger()
    entry = led.add(message())
    led.settle(entry, entry.message, ("b1", "x.test"), 2)
    assert led.depths() == {("b1", "y.test"): 1}
    led.settle(entry, entry.message, ("b1", "y.test"), 0)
    assert led.depths() == {("b1", "y.test"): 1}
