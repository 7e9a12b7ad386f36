"""``hatwist demo``: the whole relay on loopback, end to end, in one command (tests:
tests/test_demo.py).

Starts a real HAProxy, an in-process DNS server and SMTP sink, and a relay with two
bindings and a bypassed domain; submits a few messages and prints, for each, the binding,
the route and the source IP the sink saw; then stops everything it started. Needs Debian's
haproxy and root (HAProxy's ``usesrc clientip`` makes it connect from the PROXY header's
source address).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

import attrs

from hatwist.lab.haproxy import find_haproxy

__all__ = ["INSTALL_COMMAND", "Problem", "preflight", "register", "rerun_command", "run"]

EXIT_OK = 0
#: A message did not arrive, arrived from the wrong source, or a step timed out.
EXIT_FAILED = 1
#: The demo cannot run here: HAProxy is missing or we are not root.
EXIT_CANNOT_RUN = 2
#: Stopped by a signal (Ctrl-C) before it finished.
EXIT_INTERRUPTED = 130

INSTALL_COMMAND = "apt-get install -y haproxy"


@attrs.frozen
class Problem:
    """Why the demo cannot run here: ``explanation`` for people, ``command`` to run."""

    explanation: str
    command: str | None = None


def rerun_command(argv0: str, executable: str) -> str:
    """How to run this same demo again as root."""
    if os.path.basename(argv0) == "hatwist":
        return f"sudo {os.path.abspath(argv0)} demo"
    return f"sudo {executable} -m hatwist.cli demo"


def preflight(haproxy: str | None, euid: int, rerun: str = "sudo hatwist demo") -> Problem | None:
    """What stops the demo from running with this HAProxy binary and user, if anything."""
    sudo = "" if euid == 0 else "sudo "
    if haproxy is None:
        return Problem(
            "hatwist demo needs HAProxy (Debian package haproxy), which is not installed. "
            "Install it with:",
            sudo + INSTALL_COMMAND,
        )
    if euid != 0:
        return Problem(
            "hatwist demo must run as root: HAProxy's `usesrc clientip` (how it connects "
            "from each binding's source address) needs root. Run it again with sudo:",
            rerun,
        )
    return None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command to the ``hatwist`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="run the relay end to end on loopback (real HAProxy, DNS, SMTP sink)",
        description=" ".join(__doc__.split("\n\n")[1].split()),
    )
    parser.add_argument(
        "--no-config", dest="show_config", action="store_false",
        help="do not print the sample config the relay runs with",
    )
    parser.add_argument(
        "--hold", type=float, default=0.0, metavar="SECONDS",
        help="keep everything running this long after the table (to open /status)",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="also print the relay's log to stderr"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    problem = preflight(
        find_haproxy(), os.geteuid(), rerun_command(sys.argv[0], sys.executable)
    )
    if problem is not None:
        print(problem.explanation, file=err)
        if problem.command:
            print(problem.command, file=out)
        return EXIT_CANNOT_RUN
    from twisted.internet import reactor  # not before: check-config etc. need none

    if args.verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(err)], redirectStandardIO=False)
    return _run_reactor(reactor, args, out, err)


def _run_reactor(reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the demo on ``reactor`` until it ends; the lab is stopped even on Ctrl-C."""
    from twisted.internet import defer

    from hatwist.lab.demo import DemoError, Lab, run_demo

    lab = Lab(reactor)
    # On Ctrl-C the reactor stops without the demo finishing: stop the lab's parts then.
    reactor.addSystemEventTrigger("before", "shutdown", lab.stop)
    outcome: list[int] = []

    async def main() -> int:
        try:
            ok = await run_demo(reactor, lab, out, show_config=args.show_config, hold=args.hold)
        except DemoError as e:
            print(f"hatwist demo failed: {e}", file=err)
            return EXIT_FAILED
        except Exception as e:  # a part failed to start: say which, plainly
            print(f"hatwist demo failed: {type(e).__name__}: {e}", file=err)
            return EXIT_FAILED
        finally:
            await lab.stop()
        if not ok:
            print("hatwist demo failed: not every message arrived from its binding's "
                  "source (see the table)", file=err)
            return EXIT_FAILED
        print("Everything the demo started has been stopped.", file=out)
        return EXIT_OK

    def finished(code: int) -> None:
        outcome.append(code)
        reactor.stop()

    reactor.callWhenRunning(
        lambda: defer.Deferred.fromCoroutine(main()).addCallback(finished)
    )
    reactor.run()
    if not outcome:
        print("hatwist demo interrupted; everything it started has been stopped.", file=err)
        return EXIT_INTERRUPTED
    return outcome[0]

