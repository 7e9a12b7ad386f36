"""
Messages per second through the Scheduler alone: in-memory spool, instant agent.

What it measures is the scheduler's own cost per message -- splitting by domain,
queue bookkeeping, per-recipient state, the spool calls and the log events --
with delivery and disk taken out.  Two agent modes:

- ``sync``: ``deliver`` returns a fired Deferred, so every message is finished
  inside ``submit`` (queues never fill);
- ``async``: ``deliver`` answers later (the bench loop fires the answers in
  order), so all messages are submitted first and then drain through queues
  limited by ``max_connections``.

``--tempfail`` makes that fraction of first attempts answer 451, so the retry
path (backoff timer, second attempt) is exercised too.

Run: ``python3 bench/bench_scheduler.py [--messages N] [--tempfail F]``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

from twisted.internet import defer, task

from hatwist.config import parse_config
from hatwist.delivery import RecipientResult
from hatwist.delivery.attempt import AttemptResult
from hatwist.health import ServerRegistry
from hatwist.scheduler import Scheduler
from hatwist.spool import SpooledMessage
from hatwist.spool._values import new_recipients

CONFIG = "retry_interval = 60\nmax_connections = {max_connections}\nshutdown_grace = 1\n"
CONTENT = b"Subject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"


class MemorySpool:
    """The Spool's interface over a dict, every call already fired."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.messages: dict[str, SpooledMessage] = {}
        self._n = 0

    def add(self, mail_from: str, rcpt_to: list[str]) -> SpooledMessage:
        self._n += 1
        now = self.clock.seconds()
        message = SpooledMessage(
            id=f"m{self._n}", binding="default", mail_from=mail_from,
            recipients=new_recipients(rcpt_to), received_at=now, attempts=0,
            next_attempt_at=now, size=len(CONTENT),
        )
        self.messages[message.id] = message
        return message

    def store(self, binding, mail_from, rcpt_to, content):
        return defer.succeed(self.add(mail_from, list(rcpt_to)))

    def content(self, message_id):
        return defer.succeed(CONTENT)

    def update(self, message):
        self.messages[message.id] = message
        return defer.succeed(None)

    def remove(self, message_id):
        del self.messages[message_id]
        return defer.succeed(None)

    def recover(self):
        return defer.succeed([])


class InstantAgent:
    """Answers 250 (or 451 for a share of first attempts) at once or when told to."""

    def __init__(self, *, asynchronous: bool, tempfail: float) -> None:
        self.unanswered: deque[tuple[defer.Deferred, AttemptResult]] = deque()
        self.asynchronous = asynchronous
        self.tempfail = tempfail
        self.attempts = 0
        self._seen: set[str] = set()
        self._random = random.Random(1)

    def deliver(self, outbound):
        self.attempts += 1
        first = (outbound.id, outbound.domain) not in self._seen
        self._seen.add((outbound.id, outbound.domain))
        code = 451 if first and self._random.random() < self.tempfail else 250
        result = AttemptResult(
            message_id=outbound.id,
            recipients=tuple(RecipientResult(a, code, "ok") for a in outbound.envelope.rcpt_to),
            route="direct", mx_host="mx", mx_address="192.0.2.1", duration=0.0,
        )
        if not self.asynchronous:
            return defer.succeed(result)
        d = defer.Deferred()
        self.unanswered.append((d, result))
        return d

    def answer_all(self) -> bool:
        """Answer every attempt in flight (and those they start); False if there were none."""
        if not self.unanswered:
            return False
        while self.unanswered:
            d, result = self.unanswered.popleft()
            d.callback(result)
        return True


def run(*, messages: int, domains: int, rcpts: int, max_connections: int,
        asynchronous: bool, tempfail: float) -> tuple[float, int]:
    clock = task.Clock()
    config = parse_config(CONFIG.format(max_connections=max_connections))
    spool = MemorySpool(clock)
    agent = InstantAgent(asynchronous=asynchronous, tempfail=tempfail)
    scheduler = Scheduler(
        spool=spool, agent=agent, config_provider=lambda: config,
        registry=ServerRegistry((), success_threshold=1, failure_threshold=1),
        reactor=clock, reporting_mta="bench.test",
    )
    scheduler.startService()
    batch = [
        [f"u{i}-{r}@d{(i + r) % domains}.test" for r in range(rcpts)] for i in range(messages)
    ]
    started = time.perf_counter()
    for rcpt_to in batch:
        scheduler.submit(spool.add("sender@src.test", rcpt_to))
    while spool.messages:
        if agent.answer_all():
            continue
        calls = clock.getDelayedCalls()
        if not calls:
            raise RuntimeError(f"{len(spool.messages)} messages stuck")
        clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
    elapsed = time.perf_counter() - started
    scheduler.stopService()
    return elapsed, agent.attempts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--tempfail", type=float, default=0.1)
    args = parser.parse_args()
    rows = [
        # mode, domains, recipients per message, max_connections, tempfail
        ("sync", 1, 1, 10, 0.0),
        ("sync", 100, 1, 10, 0.0),
        ("sync", 100, 3, 10, 0.0),
        ("async", 1, 1, 10, 0.0),
        ("async", 100, 1, 10, 0.0),
        ("async", 100, 3, 10, 0.0),
        ("async", 100, 1, 10, args.tempfail),
    ]
    header = f"{'mode':<6} {'domains':>7} {'rcpt/msg':>8} {'max_conn':>8} {'tempfail':>8} " \
             f"{'messages':>8} {'attempts':>8} {'seconds':>8} {'msg/s':>9}"
    print(header)
    print("-" * len(header))
    for mode, domains, rcpts, max_connections, tempfail in rows:
        elapsed, attempts = run(
            messages=args.messages, domains=domains, rcpts=rcpts,
            max_connections=max_connections, asynchronous=mode == "async", tempfail=tempfail,
        )
        print(f"{mode:<6} {domains:>7} {rcpts:>8} {max_connections:>8} {tempfail:>8.2f} "
              f"{args.messages:>8} {attempts:>8} {elapsed:>8.2f} {args.messages / elapsed:>9.0f}")


if __name__ == "__main__":
    main()
