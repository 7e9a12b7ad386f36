"""
What a reload costs the reactor: ``Scheduler.config_changed`` re-times the pauses and
backoffs of the queues whose retry policy changed (issue 12), one pass over their
waiting parts, in the reactor thread.

Each row: ``--parts`` messages (one recipient each, over 100 domains) fail once with a
451 and wait in the due heap; then a reload that changes ``retry_interval`` everywhere
(every part re-timed) and one that changes no retry policy (nothing touched).  Printed:
CPU milliseconds of the ``config_changed`` call's own reactor turn, and of all the
turns the re-time takes (``_due.RETIME_PER_TURN`` parts each).  Uses the scheduler tests' World
(task.Clock, in-memory spool, an agent that answers 451 at once).

Run from the checkout: ``PYTHONPATH=. python3 bench/bench_reload.py [--parts 10000,100000]``.
"""

from __future__ import annotations

import argparse
import time

import hatwist
from hatwist.config import parse_config
from tests.test_scheduler_support import CONFIG, InstantAgent, World

BASE = CONFIG.replace("max_connections = 2", "max_connections = 1000000")


def reload_ms(world: World, text: str) -> tuple[float, float]:
    """CPU ms of the reload's own turn (``config_changed``), and of the whole re-time
    (the turns that follow it: task.Clock runs them in one ``advance(0)``)."""
    world.config = parse_config(text)
    started = time.process_time()
    world.scheduler.config_changed()
    first = time.process_time()
    world.clock.advance(0)
    return (first - started) * 1000, (time.process_time() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--parts", default="10000,100000")
    options = parser.parse_args()
    print(f"hatwist from {hatwist.__path__[0]}")
    print(f"{'parts waiting':>14}{'changed: 1st turn':>20}{'all turns':>13}"
          f"{'no policy changed':>22}")
    print("-" * 62)
    for n in (int(p) for p in options.parts.split(",")):
        w = World(BASE, max_in_flight=10**7)
        w.scheduler._dispatch._agent = InstantAgent(451)
        w.scheduler.startService()
        for i in range(n):
            w.submit(rcpt_to=(f"u{i}@d{i % 100}.test",))
        turn, whole = reload_ms(w, BASE.replace("retry_interval = 60", "retry_interval = 30"))
        same, _ = reload_ms(w, BASE.replace("retry_interval = 60", "retry_interval = 30")
                            + "\n# a comment: no policy changes\n")
        print(f"{n:>14,}{turn:>14.1f} ms{whole:>13.1f} ms{same:>19.2f} ms")


if __name__ == "__main__":
    main()
