"""Tests for hatwist.web._history and the page's charts: the last hour, per minute."""

from __future__ import annotations

import re

from twisted.internet import task

from hatwist.web import render_page, status_document
from hatwist.web._history import MAX_BINDINGS, MAX_CHANGES, MINUTES, OTHER, History
from tests.web.support import V4, attempt_event, registry, sources

NOW = 1_800_000_030.0  # half a minute into a minute


def index(when: float) -> int:
    """The position of ``when``'s minute in a series ending with NOW's minute."""
    return int(when // 60) - int(NOW // 60) - 1


def at(event: dict, when: float) -> dict:
    return {**event, "log_time": when}


def change(server: str, new: str, when: float, source=None) -> dict:
    return {"hatwist_event": "proxy_state_change", "server": server, "new": new,
            "old": "plumbed" if new == "unplumbed" else "unplumbed", "source": source,
            "log_time": when}


def test_counts_recipients_per_minute_and_binding_by_reply_class():
    history = History()
    history(at(attempt_event("b1", codes={"a@x": 250, "b@x": 451}), NOW - 30))
    history(at(attempt_event("b1", codes={"c@x": 550}), NOW - 5))
    history(at(attempt_event("b2", codes={"d@x": 250}), NOW - 125))
    found = history.deliveries(NOW)
    assert found["minutes"] == MINUTES and found["start"] == (int(NOW // 60) - 59) * 60
    b1 = found["bindings"]["b1"]
    assert len(b1["delivered"]) == MINUTES
    assert sum(b1["delivered"]) == 1 and sum(b1["deferred"]) == 1 and sum(b1["bounced"]) == 1
    assert sum(found["bindings"]["b2"]["delivered"]) == 1
    assert found["bindings"]["b2"]["delivered"][index(NOW - 125)] == 1
    assert b1["bounced"][index(NOW - 5)] == 1 and b1["delivered"][index(NOW - 30)] == 1


def test_keeps_only_the_last_hour_and_a_bounded_number_of_bindings():
    history = History()
    history(at(attempt_event("old"), NOW - 2 * 3600))
    assert sum(history.deliveries(NOW)["bindings"]["old"]["delivered"]) == 0
    for i in range(MAX_BINDINGS + 10):
        history(at(attempt_event(f"b{i}"), NOW))
    bindings = history.deliveries(NOW)["bindings"]
    assert len(bindings) == MAX_BINDINGS + 1  # the first MAX_BINDINGS ("old" too), then OTHER
    assert sum(bindings[OTHER]["delivered"]) == 11
    # Old minutes are dropped as new ones begin: memory does not grow with time.
    for minute in range(500):
        history(at(attempt_event("b1"), NOW + 60 * minute))
    assert len(history._minutes["b1"]) <= MINUTES + 1


def test_proxy_changes_of_the_last_hour_with_the_state_it_started_in():
    history = History()
    history(change("127.0.0.1:5000", "unplumbed", NOW - 7200))
    history(change("127.0.0.1:5000", "plumbed", NOW - 600))
    history(change("127.0.0.1:5000", "unplumbed", NOW - 60, source="127.0.0.9"))  # a path
    assert history.proxy_changes(NOW) == {
        "127.0.0.1:5000": [(NOW - 7200, "unplumbed"), (NOW - 600, "plumbed")]
    }
    for i in range(MAX_CHANGES * 3):
        history(change("flappy:1", "plumbed" if i % 2 else "unplumbed", NOW - 100 + i * 0.01))
    assert len(history._changes["flappy:1"]) == MAX_CHANGES


def test_page_draws_a_chart_per_binding_and_a_plumbed_strip_per_proxy():
    clock = task.Clock()
    clock.advance(NOW)
    history = History()
    history(at(attempt_event("b1", codes={"a@x": 250, "b@x": 250, "c@x": 550}), NOW - 90))
    history(change("127.0.0.1:5000", "unplumbed", NOW - 1200))
    history(change("127.0.0.1:5000", "plumbed", NOW - 600))
    src = sources(registry(V4), clock=clock)
    src = type(src)(src.registry, src.scheduler, src.version, clock, src.deliveries,
                    history=history)
    document = status_document(src)
    assert document["history"]["deliveries"]["bindings"]["b1"]["bounced"][index(NOW - 90)] == 1
    html = render_page(document)
    [figure] = re.findall(r'<figure data-binding="b1">.*?</figure>', html, re.S)
    assert "2 delivered, 0 deferred, 1 bounced" in figure
    assert len(re.findall(r'<rect class="delivered"', figure)) == 1
    assert len(re.findall(r'<rect class="bounced"', figure)) == 1
    row = re.search(r'<tr data-server="127.0.0.1:5000".*?</tr>', html, re.S).group(0)
    strip = re.search(r"<svg.*?</svg>", row, re.S).group(0)
    # plumbed before the hour's first change, unplumbed for ten minutes, plumbed since.
    assert re.findall(r'<rect class="(\w+)"', strip) == ["plumbed", "unplumbed", "plumbed"]
    assert "2 changes" in strip
    assert "<script" not in html


def test_no_history_no_charts():
    html = render_page(status_document(sources(registry(V4))))
    assert "<figure" not in html and "Last hour" not in html
