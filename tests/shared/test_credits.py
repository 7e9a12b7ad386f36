"""hatwist.shared._credits: how many throttle starts a node reserves, and for how long."""

from __future__ import annotations

from hatwist.config.values import Throttle
from hatwist.shared._credits import LIFETIME, MAX_CREDITS, Credits, lifetime, most, usable

KEY = ("b1", "example.com")
BIG = Throttle(10**6, 3600)


def test_small_throttles_never_reserve():
    """10/3600 keeps asking Redis at every start: 1/16 of it rounds down to none."""
    credits = Credits()
    assert most(Throttle(10, 3600)) == 0 and most(Throttle(16, 3600)) == 1
    small = Throttle(10, 3600)
    assert [credits.wanted(KEY, small, i * 0.01, start=True) for i in range(50)] == [0] * 50
    assert len(credits) == 0  # nothing kept for such a queue either


def test_credits_are_capped_by_a_share_of_the_throttle_and_the_maximum():
    assert most(Throttle(160, 60)) == 10
    assert most(BIG) == MAX_CREDITS


def test_a_lifetime_is_short_against_the_window_too():
    assert lifetime(BIG) == LIFETIME
    assert lifetime(Throttle(100, 1)) == 1 / 16


def want(credits, now, start=True, throttle=BIG):
    return credits.wanted(KEY, throttle, now, start=start)


def test_a_start_asks_for_as_many_as_were_asked_lately_and_one_question_at_a_time():
    credits = Credits()
    assert want(credits, 0.0) == 0  # a first start: no demand seen yet
    assert want(credits, 0.01) == 1
    # one question for credits is in flight: no second one meanwhile
    assert want(credits, 0.02) == 0
    credits.answered(KEY, [], 0.0)  # none granted (a full window, or Redis failed)
    assert want(credits, 0.03) == 3  # 0.0, 0.01, 0.02 were asked lately
    credits.answered(KEY, ["s+1", "s+2", "s+3"], 0.03 + usable(BIG))
    assert want(credits, 0.04) == 0  # 3 held: at least half of the 4 wanted


def test_more_are_asked_for_before_they_run_out():
    credits = Credits()
    for i in range(9):
        want(credits, i * 0.001)
        credits.answered(KEY, [], 0.0)
    assert want(credits, 0.009) == 9
    credits.answered(KEY, [f"s+{i}" for i in range(1, 10)], 0.2)
    taken = []
    while (credit := credits.take(KEY, BIG, 0.01)) is not None:
        taken.append(credit)
        if (more := want(credits, 0.01, start=False)):
            break
    # asked again with 5 of 9 left: fewer than half of the 13 wanted by then (the 10
    # starts asked and 4 credits taken lately, besides this one), for the difference
    assert taken == [f"s+{i}" for i in range(1, 5)] and more == 13 - 5
    credits.answered(KEY, ["t+1"], 0.3)
    rest = [credits.take(KEY, BIG, 0.02) for _ in range(7)]
    assert rest == ["s+5", "s+6", "s+7", "s+8", "s+9", "t+1", None]  # oldest first


def test_demand_older_than_a_lifetime_does_not_count():
    credits = Credits()
    for i in range(10):
        want(credits, i * 0.01)
        credits.answered(KEY, [], 0.0)
    # demand counts over the span a credit is used for, not its whole lifetime
    assert usable(BIG) == LIFETIME / 2
    assert want(credits, 0.09 + usable(BIG) + 0.01) == 0


def test_credits_are_taken_in_order_until_used_up_or_expired():
    credits = Credits()
    want(credits, 0.0)
    want(credits, 0.1)
    credits.answered(KEY, ["s+1"], 0.35)
    assert credits.take(KEY, BIG, 0.2) == "s+1"
    assert credits.take(KEY, BIG, 0.2) is None  # used up
    want(credits, 0.3)
    credits.answered(KEY, ["t+1", "t+2"], 0.55)
    assert credits.take(KEY, BIG, 0.55) is None  # expired: never used at its expiry
    assert credits.expired(0.55) == [(KEY, "t+1"), (KEY, "t+2")]  # back to the fleet


def test_a_changed_throttle_gives_the_credits_back():
    credits = Credits()
    want(credits, 0.0)
    want(credits, 0.01)
    credits.answered(KEY, ["s+1", "s+2"], 0.25)
    lowered = Throttle(1000, 3600)
    assert credits.take(KEY, lowered, 0.1) is None
    assert want(credits, 0.1, throttle=lowered) == 0  # a new stock: no demand under it yet
    assert credits.expired(0.1) == [(KEY, "s+1"), (KEY, "s+2")]


def test_an_answer_for_a_forgotten_queue_goes_back_at_once():
    credits = Credits()
    want(credits, 0.0)
    want(credits, 0.01)
    credits.drop_all()  # Redis went away meanwhile
    credits.answered(KEY, ["s+1"], 0.25)
    assert credits.take(KEY, BIG, 0.1) is None
    assert credits.expired(0.1) == [(KEY, "s+1")]


def test_quiet_queues_are_forgotten_and_the_stop_takes_every_credit():
    credits = Credits()
    other = ("b1", "other.example")
    for key in (KEY, other):
        credits.wanted(key, BIG, 0.0, start=True)
        credits.wanted(key, BIG, 0.01, start=True)
    credits.answered(KEY, ["s+1"], 0.25)
    credits.answered(other, [], 0.0)
    assert credits.next_expiry() == 0.25
    assert credits.expired(0.2) == [] and len(credits) == 2
    assert credits.expired(0.52) == [(KEY, "s+1")]
    assert len(credits) == 0 and credits.next_expiry() is None
    want(credits, 1.0)
    want(credits, 1.01)
    credits.answered(KEY, ["u+1", "u+2"], 1.25)
    assert credits.take(KEY, BIG, 1.1) == "u+1"
    assert credits.take_all() == [(KEY, "u+2")] and len(credits) == 0


def test_remembered_demand_is_bounded():
    credits = Credits(max_credits=4)
    for i in range(1000):
        want(credits, i * 1e-6)
        credits.answered(KEY, [], 0.0)
    assert len(credits._stocks[KEY].recent) == 5
