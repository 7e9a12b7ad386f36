"""``hatwist queue COMMAND [--config FILE]`` (tests: tests/control/test_cli_queue.py,
tests/service/test_queue_cli.py).

Look at and act on the running relay's queue, over its control socket (the config's
control_socket, by default control.sock in spool_dir), like Postfix's postqueue and
postsuper: list, show, flush, hold, release, delete (no DSN) and bounce (a DSN to the
sender now). Exit status 0 when the relay did what was asked, 1 when it is not running
or refused part of it, 2 for a config it cannot read.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from hatwist._text_table import text_table
from hatwist.control import STATES, Request, RequestError
from hatwist.control._protocol import DEFAULT_LIMIT, MAX_LIMIT, MAX_REQUEST, _check_shape
from hatwist.web import _format

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
#: Interrupted by Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130

DEFAULT_CONFIG = "/etc/hatwist/hatwist.conf"
#: Seconds to wait for each line of the relay's answer (a list answers within one even
#: at a million messages; an action on many sends a line per message as it goes).
TIMEOUT = 30.0
#: The longest answer line accepted from the relay (a ``show`` of a large message).
MAX_ANSWER_LINE = 16 * 1024 * 1024

#: What an action's outcome starts with when it did what was asked.
_DONE = ("held", "released", "deleted", "bounced")


class NotRunning(Exception):
    """The control socket does not answer; the message is the one line to print."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``queue`` and its commands to the ``hatwist`` command."""
    parser = subparsers.add_parser(
        "queue", help="list, show, flush, hold, release, delete or bounce queued mail",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=DEFAULT_CONFIG,
                        help=f"the relay's config file (default {DEFAULT_CONFIG}): "
                             "where its control_socket is")
    common.add_argument("--socket", metavar="PATH", default=None,
                        help="the control socket itself, instead of reading --config")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--binding", help="only this binding's queues")
    filters.add_argument("--domain", help="only queues for this destination domain")
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state", choices=STATES,
                       help="only messages in queues in this state, or held ones")
    commands = parser.add_subparsers(dest="queue_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", parents=[common, filters, state],
                                  help="queued messages, oldest first")
    listing.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                         help=f"print at most this many (default {DEFAULT_LIMIT}, "
                              f"at most {MAX_LIMIT}); the total is counted all the same")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = commands.add_parser("show", parents=[common],
                               help="one message: envelope, recipients, replies, next try")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="the message as JSON")
    commands.add_parser("flush", parents=[common, filters],
                        help="retry now: end backoff and pauses (all queues, or filtered)")
    for name, what in (
        ("hold", "never attempt (nor expire) the messages until released"),
        ("release", "release held messages: due now, expiry moved by the time held"),
        ("delete", "remove the messages, no DSN (logged with your uid)"),
        ("bounce", "fail the messages now: a DSN to each sender, like an expiry"),
    ):
        action = commands.add_parser(name, parents=[common, filters, state], help=what)
        action.add_argument("ids", nargs="*", metavar="ID")
    parser.set_defaults(run=run)


def request_of(args: argparse.Namespace) -> Request:
    """The request for the parsed arguments; RequestError when they do not fit."""
    command = args.queue_command
    ids = (args.id,) if command == "show" else tuple(getattr(args, "ids", ()))
    domain = getattr(args, "domain", None)
    request = Request(
        command=command, ids=tuple(dict.fromkeys(ids)), binding=getattr(args, "binding", None),
        domain=None if domain is None else domain.lower().rstrip("."),
        state=getattr(args, "state", None), limit=getattr(args, "limit", DEFAULT_LIMIT),
    )
    if not 1 <= request.limit <= MAX_LIMIT:
        raise RequestError(f"--limit must be from 1 to {MAX_LIMIT}")
    _check_shape(request)
    return request


def socket_path(args: argparse.Namespace) -> str:
    """The control socket: ``--socket``, or the config's control_socket (ConfigError)."""
    if args.socket:
        return args.socket
    from hatwist.config import load_config

    return load_config(args.config).service.control_socket_path


def ask(path: str, request: Request, timeout: float = TIMEOUT) -> Iterator[dict[str, Any]]:
    """Send ``request`` to the relay at ``path``; yield its answer's lines (blocking)."""
    line = json.dumps(request.to_json(), separators=(",", ":")).encode("utf-8") + b"\n"
    if len(line) > MAX_REQUEST:
        raise RequestError(f"the request is longer than {MAX_REQUEST} bytes: name fewer ids")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        try:
            client.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(f"no relay is listening on {path} "
                             "(is it running with this config?)") from None
        except PermissionError:
            raise NotRunning(f"permission denied on {path}: run this as the relay's user "
                             "(the socket is mode 0600)") from None
        client.sendall(line)
        reader = client.makefile("rb")
        while True:
            answer = reader.readline(MAX_ANSWER_LINE)
            if not answer:
                break
            yield json.loads(answer)
    except TimeoutError:
        raise NotRunning(f"the relay on {path} did not answer within {timeout:g}s") from None
    finally:
        client.close()


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    from hatwist.config import ConfigError

    try:
        request = request_of(args)
        path = socket_path(args)
    except RequestError as e:
        print(f"hatwist queue: {e}", file=err)
        return EXIT_BAD_CONFIG
    except ConfigError as e:
        print(f"hatwist queue: {e}", file=err)
        return EXIT_BAD_CONFIG
    except OSError as e:
        print(f"hatwist queue: cannot read config {args.config}: {e.strerror}", file=err)
        return EXIT_BAD_CONFIG
    try:
        return _answer(request, ask(path, request), args, out, err)
    except NotRunning as e:
        print(f"hatwist queue: {e}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # closing the socket is what stops a bulk action (between two batches)
        stop = "" if request.command in ("list", "show", "flush") else (
            ": the relay stops the action between two batches; what it did is logged")
        print(f"hatwist queue: interrupted{stop}", file=err)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `hatwist queue list | head`: the reader has all it wants
        _quiet(out)
        return EXIT_FAILED


def _quiet(out: TextIO) -> None:
    """Point ``out`` at /dev/null, so that the flush at exit does not fail again."""
    try:
        fileno = out.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)


def _answer(request: Request, lines: Iterator[dict[str, Any]], args: argparse.Namespace,
            out: TextIO, err: TextIO) -> int:
    as_json = getattr(args, "json", False)
    rows: list[dict[str, Any]] = []
    last: dict[str, Any] = {"ok": False, "error": "the relay closed without an answer"}
    status = EXIT_OK
    for answer in lines:
        if "message" in answer and "ok" not in answer:
            if as_json:
                print(json.dumps(answer["message"], sort_keys=True), file=out)
            else:
                rows.append(answer["message"])
            continue
        if "result" in answer and "ok" not in answer:  # an action's, as it goes
            message_id, outcome = answer["result"]
            print(f"{message_id}: {outcome}", file=out, flush=True)
            if not outcome.startswith(_DONE):
                status = EXIT_FAILED
            continue
        last = answer
    if not last.get("ok"):
        print(f"hatwist queue: {last.get('error')}", file=err)
        return EXIT_FAILED
    command, now = request.command, time.time()
    if command == "list":
        if as_json:
            print(json.dumps({"total": last["total"], "shown": last["shown"]}), file=out)
        else:
            for text in list_text(rows, last, now):
                print(text, file=out)
        return EXIT_OK
    if command == "show":
        if as_json:
            print(json.dumps(last["message"], sort_keys=True, indent=2), file=out)
        else:
            for text in show_text(last["message"], now):
                print(text, file=out)
        return EXIT_OK
    if command == "flush":
        print(f"flushed {last['queues']} queue(s): {last['messages']} message(s) due now",
              file=out)
        return EXIT_OK
    if not last["matched"]:
        print("no message matched", file=out)
    elif not request.ids:  # a filter: say what it came to in all
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(last["counts"].items()))
        print(f"{last['matched']} message(s) matched: {counts}", file=out)
    return status


def list_text(rows: list[dict[str, Any]], last: dict[str, Any], now: float) -> list[str]:
    """``hatwist queue list`` for a terminal: a table, then the count."""
    table = text_table(
        ["ID", "STATE", "BINDING", "DOMAINS", "RCPTS", "TRIES", "NEXT TRY", "SIZE", "FROM"],
        ([r["id"], r["state"], r["binding"], ",".join(r["domains"]) or _format.NOTHING,
          f"{r['pending']}/{r['recipients']}", str(r["attempts"]),
          _format.until(now, r["next_attempt_at"]), str(r["size"]), f"<{r['from']}>"]
         for r in rows),
        indent="",
    ) if rows else []
    total, shown = last["total"], last["shown"]
    if total > shown:
        table.append(f"{total} message(s) match; the first {shown} shown (--limit)")
    else:
        table.append(f"{total} message(s)")
    return table


def show_text(m: dict[str, Any], now: float) -> list[str]:
    """``hatwist queue show ID`` for a terminal."""
    lines = [
        f"message   {m['id']}",
        f"state     {m['state']}" + (f" since {_format.utc(m['held_at'])}" if m["held_at"]
                                     else ""),
        f"binding   {m['binding']}",
        f"from      <{m['from']}>",
        f"received  {_format.utc(m['received_at'])} ({_format.age(now, m['received_at'])})",
        f"size      {m['size']} bytes",
        f"attempts  {m['attempts']}",
        "",
    ]
    lines += text_table(
        ["RECIPIENT", "STATUS", "TRIES", "LAST REPLY"],
        ([r["address"], r["status"], str(r["attempts"]),
          " ".join(str(p) for p in (r["code"], r["reason"]) if p is not None) or _format.NOTHING]
         for r in m["recipients"]),
        indent="",
    )
    if m["queues"]:
        lines.append("")
        lines += text_table(
            ["DOMAIN", "STATE", "NEXT TRY", "EXPIRES"],
            ([q["domain"], q["state"], _format.until(now, q["next_attempt_at"]),
              _format.utc(q["expires_at"])] for q in m["queues"]),
            indent="",
        )
    return lines
