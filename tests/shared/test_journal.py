"""hatwist.shared._journal: the starts a node replays to a Redis that comes back."""

from __future__ import annotations

from hatwist.config.values import Throttle
from hatwist.shared._journal import SWEEP_INTERVAL, Journal

KEY = ("b1", "example.com")


def test_keeps_only_the_last_n_starts_still_in_their_window():
    journal = Journal()
    for i in range(10):
        journal.record(KEY, Throttle(3, 100), float(i), f"s{i}")
    [(key, throttle, starts)] = journal.recent(50.0)
    assert (key, throttle) == (KEY, Throttle(3, 100))
    assert starts == [(7.0, "s7"), (8.0, "s8"), (9.0, "s9")]
    assert list(journal.recent(107.5)) == [(KEY, Throttle(3, 100), [(8.0, "s8"), (9.0, "s9")])]
    assert list(journal.recent(109.0)) == []


def test_unthrottled_starts_are_not_kept_and_old_queues_are_swept():
    journal = Journal()
    journal.record(KEY, None, 0.0, "x")
    assert len(journal) == 0
    journal.record(KEY, Throttle(1, 10), 0.0, "a")
    journal.record(("b1", "other.example"), Throttle(1, 10), SWEEP_INTERVAL + 1, "b")
    assert len(journal) == 1  # KEY's start left its window long ago
