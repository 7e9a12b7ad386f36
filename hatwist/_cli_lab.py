"""``hatwist lab``: keep the demo's HAProxy, DNS and SMTP sink running to try a relay by
hand (tests: tests/test_lab.py).

Starts a real HAProxy (accept-proxy, usesrc clientip), an in-process DNS server with a
small sample zone and a recording SMTP sink, prints a relay config that uses them and a
swaks command to try, and reports every message the sink receives until Ctrl-C. Needs
Debian's haproxy and root, like hatwist demo.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any, TextIO

from hatwist._cli_demo import EXIT_CANNOT_RUN, preflight, rerun_command
from hatwist.lab.haproxy import find_haproxy

EXIT_OK = 0
EXIT_FAILED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``lab`` sub-command to the ``hatwist`` command."""
    parser = subparsers.add_parser(
        "lab",
        help="keep a loopback HAProxy, DNS and SMTP sink running to try your own relay",
        description=" ".join(__doc__.split("\n\n")[1].split()),
    )
    parser.add_argument(
        "--write-config", metavar="FILE", default=None,
        help="also write the relay config for this lab to FILE",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    problem = preflight(find_haproxy(), os.geteuid(),
                        rerun_command(sys.argv[0], sys.executable).replace(" demo", " lab"))
    if problem is not None:
        print(problem.explanation.replace("hatwist demo", "hatwist lab"), file=err)
        if problem.command:
            print(problem.command, file=out)
        return EXIT_CANNOT_RUN
    from twisted.internet import reactor

    return _run_reactor(reactor, args, out, err)


def _run_reactor(reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from twisted.internet import defer

    from hatwist.lab.playground import Playground, run_lab

    lab = Playground(reactor)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.Deferred.fromCoroutine(
        lab.stop()))
    failed: list[str] = []
    spool_dir = os.path.join(tempfile.gettempdir(), "hatwist-lab-spool")

    def start_failed(failure: Any) -> None:
        failed.append(f"{type(failure.value).__name__}: {failure.value}")
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run_lab(
        reactor, lab, out, config_path=args.write_config, spool_dir=spool_dir,
    )).addErrback(start_failed))
    reactor.run()
    if failed:
        print(f"hatwist lab failed: {failed[0]}", file=err)
        return EXIT_FAILED
    print("hatwist lab stopped; everything it started has been stopped.", file=out)
    return EXIT_OK
