# -*- test-case-name: tests.web.test_page -*-
"""
The HTML status page an operator leaves open: it reloads itself every few seconds.

Pure: rendered from the /status document, so the page never shows anything the JSON
does not. Every value is escaped; there are no scripts and no external assets (the
server's Content-Security-Policy forbids them), so the page works on an isolated host.
Each proxy row carries ``data-server`` and ``data-state``, each queue row ``data-binding``,
``data-domain`` and ``data-state``, for tools that read the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from . import _format
from ._charts import deliveries_chart, plumbed_strip

#: Seconds between reloads (``<meta http-equiv="refresh">``).
REFRESH_SECONDS = 5

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
p.summary { margin: 0; color: #555; }
table { border-collapse: collapse; }
th, td { padding: .25em .7em; border-bottom: 1px solid #ddd; text-align: left; }
td { white-space: nowrap; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.state { font-weight: bold; text-transform: uppercase; color: #fff; }
td.state.plumbed { background: #1a7f37; }
td.state.unplumbed { background: #cf222e; }
td.state.active { background: #1a7f37; }
td.state.backoff, td.state.throttled { background: #9a6700; }
td.state.waiting_for_proxy, td.state.paused { background: #cf222e; }
td.error, td.reason { white-space: normal; max-width: 36em; overflow-wrap: anywhere; }
td.error { color: #cf222e; }
td.history { padding: .25em .4em; }
figure { margin: 0 0 1em; }
figcaption { color: #555; margin-bottom: .2em; }
.legend span { display: inline-block; width: .8em; height: .8em; margin: 0 .3em 0 1em; }
td.empty { color: #777; font-style: italic; }
"""

_PROXY_COLUMNS = (
    "server",
    "state",
    "consecutive ok",
    "consecutive failed",
    "last check",
    "latency",
    "checks",
    "failed checks",
    "no greeting",
    "sources",
    "last error",
    "last hour",
)


def _cell(value: object, css: str | None = None) -> str:
    attribute = f' class="{escape(css)}"' if css else ""
    return f"<td{attribute}>{escape(_format.text(value))}</td>"


def _table(table_id: str, columns: Sequence[str], rows: Iterable[str], empty: str) -> list[str]:
    body = list(rows) or [
        f'<tr><td class="empty" colspan="{len(columns)}">{escape(empty)}</td></tr>'
    ]
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    return [
        f'<table id="{table_id}">',
        f"<thead><tr>{head}</tr></thead>",
        "<tbody>",
        *body,
        "</tbody>",
        "</table>",
    ]


def _proxy_row(proxy: dict[str, Any], now: float, history: dict[str, Any] | None) -> str:
    server, state = proxy["server"], proxy["state"]
    strip = ""
    if history is not None:
        start = history["deliveries"]["start"]
        changes = history["proxies"].get(server, [])
        strip = plumbed_strip(server, changes, state, min(start, now), now)
    cells = [
        _cell(server, "server"),
        _cell(state, f"state {state}"),
        _cell(proxy["consecutive_successes"], "number"),
        _cell(proxy["consecutive_failures"], "number"),
        _cell(_format.age(now, proxy["last_check"])),
        _cell(_format.latency(proxy["last_latency"]), "number"),
        _cell(proxy["checks"], "number"),
        _cell(proxy["failures"], "number"),
        _cell(proxy.get("no_greeting", 0), "number"),
        _cell(_format.sources(proxy.get("sources", ())), "sources"),
        _cell(proxy["last_error"], "error" if proxy["last_error"] else None),
        f'<td class="history">{strip}</td>',
    ]
    return f'<tr data-server="{escape(server)}" data-state="{escape(state)}">{"".join(cells)}</tr>'


_QUEUE_COLUMNS = (
    "binding",
    "domain",
    "pending",
    "in flight",
    "state",
    "next try",
    "reason",
)


def _queue_row(queue: dict[str, Any], now: float) -> str:
    state = queue["state"]
    cells = [
        _cell(queue["binding"]),
        _cell(queue["domain"]),
        _cell(queue["pending"], "number"),
        _cell(queue["in_flight"], "number"),
        _cell(state, f"state {state}"),
        _cell(_format.until(now, queue["until"])),
        _cell(queue["reason"], "reason"),
    ]
    data = " ".join(
        f'data-{name}="{escape(str(queue[name]))}"' for name in ("binding", "domain", "state")
    )
    return f"<tr {data}>{''.join(cells)}</tr>"


def counter_rows(deliveries: dict[str, Any], no_greeting: int) -> list[tuple[str, object]]:
    """(name, value) of every counter the page and ``hatwist status`` show, in order."""
    rows: list[tuple[str, object]] = [
        *((f"scheduler: {name}", n) for name, n in deliveries.get("counters", {}).items()),
        *((f"attempt results: {name}", n) for name, n in deliveries.get("results", {}).items()),
    ]
    if "in_flight" in deliveries:
        rows.append(("attempts in flight", deliveries["in_flight"]))
    if "tls_skipped" in deliveries:
        rows.append(("plaintext, TLS skipped", deliveries["tls_skipped"]))
    rows.append(("proxy connected, no greeting", no_greeting))
    return rows


#: Queue states that need an operator's eye, worst first (after an unplumbed proxy).
_WORRYING = (
    ("paused", "paused"),
    ("waiting_for_proxy", "waiting for a proxy"),
    ("backoff", "backing off"),
    ("throttled", "throttled"),
)


def _problems(document: dict[str, Any]) -> list[str]:
    """What is wrong, worst first: unplumbed proxies, then queues by state."""
    problems = []
    unplumbed = sum(p["state"] != "plumbed" for p in document["proxies"])
    if unplumbed:
        problems.append(f"{unplumbed} proxy server{'s' if unplumbed > 1 else ''} unplumbed")
    for state, words in _WORRYING:
        count = sum(q["state"] == state for q in document["queues"])
        if count:
            problems.append(f"{count} queue{'s' if count > 1 else ''} {words}")
    return problems


def headline(document: dict[str, Any]) -> str:
    """The page title: the worst state of the relay, so a tab or a wallboard says it."""
    problems = _problems(document)
    if problems:
        return f"hatwist: {problems[0]}"
    if not document["proxies"]:
        return "hatwist: ok"
    return "hatwist: all plumbed, queues active" if document["queues"] else \
        "hatwist: all plumbed, nothing queued"


def _summary(document: dict[str, Any]) -> str:
    proxies = document["proxies"]
    if not proxies:
        parts = ["no proxy servers configured"]
    else:
        plumbed = sum(p["state"] == "plumbed" for p in proxies)
        parts = [f"{plumbed} of {len(proxies)} proxy servers plumbed"]
    queues = document["queues"]
    parts.append(f"{len(queues)} queue{'' if len(queues) == 1 else 's'} with mail")
    parts += _problems(document)[1 if any(p["state"] != "plumbed" for p in proxies) else 0:]
    return " \u00b7 ".join(parts)


def _charts(history: dict[str, Any] | None) -> list[str]:
    if history is None:
        return []
    deliveries = history["deliveries"]
    legend = "".join(f'<span style="background:{colour}"></span>{kind}'
                     for kind, colour in (("delivered", "#1a7f37"), ("deferred", "#9a6700"),
                                          ("bounced", "#cf222e")))
    lines = ["<h2>Last hour</h2>",
             f'<p class="legend">recipients per minute, by binding:{legend}</p>']
    if not deliveries["bindings"]:
        lines.append('<p class="summary">no delivery attempts in the last hour</p>')
    for binding, series in deliveries["bindings"].items():
        total = {kind: sum(counts) for kind, counts in series.items()}
        caption = (f"binding {binding}: {total.get('delivered', 0)} delivered, "
                   f"{total.get('deferred', 0)} deferred, {total.get('bounced', 0)} bounced")
        lines += [f'<figure data-binding="{escape(binding)}">',
                  f"<figcaption>{escape(caption)}</figcaption>",
                  deliveries_chart(binding, series, deliveries["start"]),
                  "</figure>"]
    return lines


def render_page(document: dict[str, Any], refresh: int = REFRESH_SECONDS) -> str:
    """The whole page for one /status document."""
    now = document["now"]
    proxies = document["proxies"]
    history = document.get("history")
    title = headline(document)
    counters = counter_rows(document["deliveries"], document["no_greeting"])
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{int(refresh)}">',
        f"<title>{escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>hatwist {escape(str(document['version']))}</h1>",
        f'<p class="summary">{escape(_summary(document))} &middot; as of '
        f"{escape(_format.utc(now))} &middot; refreshes every {int(refresh)} s</p>",
        "<h2>Proxy servers</h2>",
        *_table(
            "proxies",
            _PROXY_COLUMNS,
            (_proxy_row(p, now, history) for p in proxies),
            "no proxy servers configured",
        ),
        "<h2>Queues</h2>",
        *_table(
            "queues",
            _QUEUE_COLUMNS,
            (_queue_row(q, now) for q in document["queues"]),
            "no mail queued",
        ),
        *_charts(history),
        "<h2>Counters</h2>",
        *_table(
            "counters",
            ("counter", "value"),
            (f"<tr>{_cell(n)}{_cell(v, 'number')}</tr>" for n, v in counters),
            "none",
        ),
        "</body>",
        "</html>",
    ]
    return "\n".join(lines) + "\n"
