"""``hatwist status [--url URL | --config FILE]`` (tests: tests/web/test_cli_status.py).

Fetches a running hatwist's /status document and prints it as tables: the proxy servers
with their plumbed/unplumbed state, the queues with their state (active, backoff,
waiting_for_proxy, throttled, paused, held) and next try, and the counters. Exit status 0 when the
service answered, 1 when it could not be reached or did not answer with a status document,
2 when ``--config`` names a file that is not a valid config (the error is printed as
``hatwist check-config`` prints it).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

from hatwist._text_table import text_table
from hatwist.web import _format
from hatwist.web._page import counter_rows

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_BAD_CONFIG = 2

#: ``status_listen``'s default in the config schema.
DEFAULT_URL = "http://127.0.0.1:8025"

#: Seconds to wait for the service; the CLI is not the reactor, so blocking is fine.
TIMEOUT = 10.0

STATUS_PATH = "/status"


class StatusUnavailable(Exception):
    """The status document could not be fetched or read; the message says why."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``status`` sub-command to the ``hatwist`` command."""
    parser = subparsers.add_parser(
        "status",
        help="show a running hatwist's proxy states, queues and counters",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"the service's status_listen address as a URL (default {DEFAULT_URL})",
    )
    where.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="read status_listen from this config file (the one the relay runs with)",
    )
    parser.set_defaults(run=run)


def url_from_config(path: str) -> str:
    """The status URL of the relay that runs with the config file at ``path``.

    A wildcard ``status_listen`` (``0.0.0.0``, ``::``) is reached on the loopback address
    of its family: that is where the relay on this host answers.  Raises ConfigError.
    """
    from hatwist.config import load_config  # only this path needs the config package

    address = load_config(path).service.status_listen
    host = address.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{address.port}"


def status_url(url: str) -> str:
    """``url`` pointing at /status: a bare ``http://host:port`` gets the path added."""
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path=STATUS_PATH)
    return urllib.parse.urlunsplit(parts)


#: Never through ``http_proxy`` from the environment: status_listen is the operator's own
#: service, usually on loopback, which an outbound web proxy cannot (and must not) reach.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The /status document at ``url``; raises :class:`StatusUnavailable`."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise StatusUnavailable(f"{url} answered {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise StatusUnavailable(f"cannot reach {url}: {e.reason}") from None
    except (OSError, ValueError) as e:
        raise StatusUnavailable(f"cannot reach {url}: {e}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise StatusUnavailable(f"{url} did not answer with JSON") from None
    if not isinstance(document, dict) or not {"proxies", "queues"} <= document.keys():
        raise StatusUnavailable(f"{url} did not answer with a hatwist status document")
    return document


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if getattr(args, "config", None):
        from hatwist.config import ConfigError

        try:
            url = status_url(url_from_config(args.config))
        except ConfigError as e:
            print(e, file=err)
            return EXIT_BAD_CONFIG
    else:
        url = status_url(getattr(args, "url", None) or DEFAULT_URL)
    try:
        document = fetch(url)
    except StatusUnavailable as e:
        print(f"hatwist status: {e}", file=err)
        hint = ("is the service running with this config?" if getattr(args, "config", None)
                else "is the service running, and is --url its status_listen address?")
        print(hint, file=err)
        return EXIT_UNREACHABLE
    out.write(as_text(document, url))
    return EXIT_OK


def _proxy_rows(document: dict[str, Any]) -> list[list[str]]:
    now = document.get("now", 0.0)
    return [
        [
            str(p["server"]),
            str(p["state"]).upper(),
            str(p["consecutive_successes"]),
            str(p["consecutive_failures"]),
            _format.age(now, p.get("last_check")),
            _format.latency(p.get("last_latency")),
            f"{p.get('failures', 0)}/{p.get('checks', 0)}",
            str(p.get("no_greeting", 0)),
            _format.sources(p.get("sources", ())),
            _format.text(p.get("last_error")),
        ]
        for p in document["proxies"]
    ]


def _queue_rows(document: dict[str, Any]) -> list[list[str]]:
    """One row per queue; a document from a hatwist without queue states shows ``-``."""
    now = document.get("now", 0.0)
    return [
        [
            str(q["binding"]),
            str(q["domain"]),
            str(q.get("pending", q.get("depth"))),  # "depth": a relay before 0.2
            _format.text(q.get("in_flight")),
            _format.text(q.get("state")),
            _format.until(now, q.get("until")),
            _format.text(q.get("reason")),
        ]
        for q in document["queues"]
    ]


def as_text(document: dict[str, Any], url: str) -> str:
    """The status document as aligned tables for a terminal."""
    version = document.get("version", "?")
    now = document.get("now")
    when = f" at {_format.utc(now)}" if isinstance(now, int | float) else ""
    lines = [f"hatwist {version}, {url}{when}", "", "proxy servers"]
    if document["proxies"]:
        lines += text_table(
            [
                "server",
                "state",
                "ok",
                "failed",
                "last check",
                "latency",
                "failed/checks",
                "no greeting",
                "sources",
                "last error",
            ],
            _proxy_rows(document),
        )
    else:
        lines.append("  (none configured)")
    lines += ["", "queues"]
    if document["queues"]:
        lines += text_table(
            ["binding", "domain", "pending", "in flight", "state", "next try", "reason"],
            _queue_rows(document),
        )
    else:
        lines.append("  (no mail queued)")
    counters = counter_rows(document.get("deliveries", {}), document.get("no_greeting", 0))
    lines += ["", "counters"]
    lines += text_table(["counter", "value"], ([name, str(value)] for name, value in counters))
    return "\n".join(lines) + "\n"
