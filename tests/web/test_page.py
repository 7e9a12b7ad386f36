"""Tests for hatwist.web._page and _format: the HTML page, rendered without a browser."""

from __future__ import annotations

import re

import pytest

from hatwist.scheduler import QueueState
from hatwist.web import REFRESH_SECONDS, DeliveryMetrics, _format, render_page, status_document
from tests.web.support import (
    V4,
    V6,
    FakeScheduler,
    attempt_event,
    proxy_rows,
    registry,
    sources,
    unplumb,
)


def page(reg=None, scheduler=None, deliveries=None) -> str:
    return render_page(status_document(sources(reg, scheduler, deliveries=deliveries)))


def test_each_proxy_row_shows_its_state_visibly_and_as_data():
    reg = registry(V4, V6)
    unplumb(reg, V6, at=1.0, error="refused")
    assert proxy_rows(page(reg)) == {
        "127.0.0.1:5000": {"data-state": "plumbed", "class": "state plumbed", "text": "plumbed"},
        "[0::1]:5001": {"data-state": "unplumbed", "class": "state unplumbed", "text": "unplumbed"},
    }


def title(html: str) -> str:
    return re.search(r"<title>(.*)</title>", html).group(1)


def test_title_names_the_worst_state_of_proxies_and_queues():
    reg = registry(V4, V6)
    assert title(page(reg)) == "hatwist: all plumbed, nothing queued"
    key = ("b1", "a.test")
    states = {
        ("b1", "p.test"): QueueState("b1", "p.test", 1, 0, "paused", 9.0, "no MX answered"),
        ("b1", "w.test"): QueueState("b1", "w.test", 1, 0, "waiting_for_proxy", 9.0),
        ("b1", "x.test"): QueueState("b1", "x.test", 1, 0, "backoff", 9.0, "451"),
        key: QueueState(*key, 1, 0, "active", None),
    }
    scheduler = FakeScheduler(dict.fromkeys(states, 1), states=states)
    # A paused queue is worse than one waiting for a proxy or backing off; the title no
    # longer says "all plumbed" while a queue is paused.
    assert title(page(reg, scheduler)) == "hatwist: 1 queue paused"
    unplumb(reg, V4, at=1.0, error="refused")
    html = page(reg, scheduler)
    assert title(html) == "hatwist: 1 proxy server unplumbed"
    summary = re.search(r'<p class="summary">(.*?) &middot;', html).group(1)
    assert "1 queue paused" in summary and "1 queue waiting for a proxy" in summary
    assert "1 queue backing off" in summary
    only_active = FakeScheduler({key: 1}, states={key: states[key]})
    assert title(page(registry(V4), only_active)) == "hatwist: all plumbed, queues active"


def test_one_word_for_pending_recipients_on_the_page():
    html = page(registry(V4), FakeScheduler({("b1", "a.test"): 4}))
    assert "<th>pending</th>" in html
    assert "pending recipients" not in html and "depth" not in html


def test_refreshes_itself():
    assert f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' in page(registry())
    assert 0 < REFRESH_SECONDS <= 10


def test_every_value_is_escaped():
    reg = registry(V4)
    unplumb(reg, V4, at=1.0, error='<script>alert("x")</script> & more')
    scheduler = FakeScheduler({("<b>binding</b>", "dom\"ain'.test"): 1})
    html = page(reg, scheduler)
    assert "<script>" not in html and "<b>binding" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in html
    assert "&lt;b&gt;binding&lt;/b&gt;" in html and "dom&quot;ain&#x27;.test" in html


def test_no_scripts_and_no_external_assets():
    html = page(registry(V4, V6), FakeScheduler({("b", "d"): 1}))
    assert "<script" not in html
    assert not re.search(r"\b(src|href)=", html)
    assert "url(" not in html and "@import" not in html


def test_queues_and_counters_are_shown():
    deliveries = DeliveryMetrics()
    deliveries(attempt_event(no_greeting=["127.0.0.1:5000"], codes={"a@x.test": 451}))
    html = page(
        registry(V4), FakeScheduler({("b1", "example.test"): 42}, {"delivered": 9}), deliveries
    )
    assert (
        '<tr data-binding="b1" data-domain="example.test" data-state="active">'
        '<td>b1</td><td>example.test</td><td class="number">42</td><td class="number">0</td>'
        '<td class="state active">active</td><td>-</td><td class="reason">-</td></tr>'
    ) in html
    assert '<tr><td>scheduler: delivered</td><td class="number">9</td></tr>' in html
    assert '<tr><td>attempt results: temporary</td><td class="number">1</td></tr>' in html
    assert '<tr><td>proxy connected, no greeting</td><td class="number">1</td></tr>' in html


def test_attempts_that_skipped_tls_are_a_counter_row():
    deliveries = DeliveryMetrics()
    deliveries(attempt_event(tls_skipped="STARTTLS refused: 454 4.7.0 not now"))
    html = page(registry(V4), FakeScheduler(), deliveries)
    assert '<tr><td>plaintext, TLS skipped</td><td class="number">1</td></tr>' in html


def test_empty_tables_say_so():
    html = page(None, None)
    assert "no proxy servers configured" in html and "no mail queued" in html


@pytest.mark.parametrize(
    ("then", "expected"),
    [
        (None, "never"),
        (1000.0, "0s ago"),
        (993.4, "7s ago"),
        (1000.0 - 185, "3m05s ago"),
        (1000.0 - 2 * 3600 - 600, "2h10m ago"),
        (1000.0 - 3 * 86400 - 4 * 3600, "3d04h ago"),
        (1005.0, "0s ago"),  # a check stamped after "now" (clock skew) is not negative
    ],
)
def test_age_reads_for_a_person(then, expected):
    assert _format.age(1000.0, then) == expected


def test_latency_and_empty_values():
    assert _format.latency(0.0021) == "2.1 ms"
    assert _format.latency(None) == _format.text(None) == _format.text("") == "-"
    assert _format.utc(0) == "1970-01-01 00:00:00 UTC"


def test_a_proxy_row_names_each_source_and_marks_the_unplumbed_ones():
    reg = registry(V4, V6)
    reg.record_sources(V4, {"192.0.2.10": None, "192.0.2.11": "no banner"}, at=5.0)
    html = page(reg)
    (row,) = [line for line in html.splitlines() if 'data-server="127.0.0.1:5000"' in line]
    assert '<td class="sources">192.0.2.10 plumbed, 192.0.2.11 UNPLUMBED</td>' in row
    (other,) = [line for line in html.splitlines() if 'data-server="[0::1]:5001"' in line]
    assert '<td class="sources">-</td>' in other


def test_a_waiting_queue_shows_its_state_next_try_and_reason_escaped():
    key = ("b1", "example.test")
    held = QueueState(*key, 5, 0, "waiting_for_proxy", 1_800_000_000.0 + 720, "no <proxy>")
    html = page(registry(V4), FakeScheduler({key: 5}, states={key: held}))
    [row] = [line for line in html.splitlines() if 'data-domain="example.test"' in line]
    assert 'data-state="waiting_for_proxy"' in row
    assert '<td class="state waiting_for_proxy">waiting_for_proxy</td>' in row
    assert "<td>in 12m00s</td>" in row
    assert '<td class="reason">no &lt;proxy&gt;</td>' in row


@pytest.mark.parametrize(
    ("then", "expected"),
    [
        (None, "-"),
        (1000.0, "now"),
        (990.0, "now"),  # overdue: it goes at the next turn
        (1007.0, "in 7s"),
        (1000.0 + 720, "in 12m00s"),
        (1000.0 + 2 * 3600 + 600, "in 2h10m"),
    ],
)
def test_until_reads_for_a_person(then, expected):
    assert _format.until(1000.0, then) == expected


def test_long_reasons_wrap_instead_of_widening_the_table():
    assert re.search(r"td\.error, td\.reason \{ white-space: normal;", page(registry()))
