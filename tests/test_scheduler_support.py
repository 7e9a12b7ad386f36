"""
What the scheduler tests share: a World (task.Clock, in-memory spool, scripted agent,
real config and proxy registry) and helpers to read DSNs.

The agent's Deferreds are held open until a test answers them; the spool is a dict,
with ``recover_batches`` built on ``recover`` as the Spool's own.
"""

from __future__ import annotations

import email
import email.policy

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

from hatwist.config import parse_config
from hatwist.delivery import RecipientResult
from hatwist.delivery.attempt import AttemptResult
from hatwist.health import ServerRegistry
from hatwist.scheduler import Scheduler
from hatwist.spool import MessageNotFound, SpooledMessage
from hatwist.spool._values import new_recipients

CONFIG = """
retry_interval = 60
message_expiration = 3600
max_connections = 2
shutdown_grace = 10
ha_proxy_client {
  health_check_interval = 5
}
binding proxied {
  ha_proxy_server = 127.0.0.1:5000
  ha_proxy_src_addr = 127.0.0.9
}
"""


START = 1_000_000.0


class MemorySpool:
    """The Spool's interface over a dict; calls succeed at once unless told to fail."""

    def __init__(self, clock):
        self.clock = clock
        self.messages: dict[str, SpooledMessage] = {}
        self.contents: dict[str, bytes] = {}
        self.removed: list[str] = []
        self.stored: list[SpooledMessage] = []
        self.fail_updates = 0
        self._n = 0

    def add(self, binding, mail_from, rcpt_to, content=b"Subject: hi\r\n\r\nbody\r\n", **kw):
        self._n += 1
        now = self.clock.seconds()
        message = SpooledMessage(
            id=f"m{self._n}", binding=binding, mail_from=mail_from,
            recipients=new_recipients(rcpt_to), received_at=now, attempts=0,
            next_attempt_at=now, size=len(content),
        )
        message = attrs.evolve(message, **kw)
        self.messages[message.id] = message
        self.contents[message.id] = content
        return message

    def store(self, binding, mail_from, rcpt_to, content):
        message = self.add(binding, mail_from, rcpt_to, content)
        self.stored.append(message)
        return defer.succeed(message)

    def content(self, message_id):
        if message_id not in self.contents:
            return defer.fail(MessageNotFound(message_id))
        return defer.succeed(self.contents[message_id])

    def update(self, message):
        if self.fail_updates:
            self.fail_updates -= 1
            return defer.fail(OSError(28, "No space left on device"))
        self.messages[message.id] = message
        return defer.succeed(None)

    def remove(self, message_id):
        self.removed.append(message_id)
        del self.messages[message_id]
        del self.contents[message_id]
        return defer.succeed(None)

    def recover(self):
        return defer.succeed(sorted(self.messages.values(), key=lambda m: m.id))

    def recover_batches(self, on_batch, *, batch_size=10_000):
        """Like the Spool's: ``recover()`` handed out in batches (here with no
        reactor turn in between)."""

        def feed(messages):
            for start in range(0, len(messages), batch_size):
                on_batch(messages[start:start + batch_size])
            return len(messages)

        return self.recover().addCallback(feed)


class HeldAgent:
    """Every deliver() call waits until the test answers it."""

    def __init__(self, clock):
        self.clock = clock
        self.calls: list[tuple[object, defer.Deferred]] = []
        self.times: list[float] = []
        self.cancelled = 0

    def deliver(self, outbound):
        d = defer.Deferred(lambda _: self._cancelled())
        self.calls.append((outbound, d))
        self.times.append(self.clock.seconds())
        return d

    def _cancelled(self):
        self.cancelled += 1

    def pending(self):
        return [(o, d) for o, d in self.calls if not d.called]

    def answer(self, index, code, text="", codes=None):
        """Fire call ``index``: every recipient gets ``code`` (or its entry in ``codes``)."""
        outbound, d = self.calls[index]
        d.callback(result_for(outbound, code, text, codes))


def result_for(outbound, code, text="", codes=None):
    codes = codes or {}
    return AttemptResult(
        message_id=outbound.id,
        recipients=tuple(
            RecipientResult(a, codes.get(a, code), text) for a in outbound.envelope.rcpt_to
        ),
        route="direct", mx_host="mx.test", mx_address="192.0.2.1", duration=0.1,
    )


class World:
    def __init__(self, config_text=CONFIG, agent=None, **options):
        self.clock = task.Clock()
        self.clock.advance(START)
        self.config = parse_config(config_text)
        self.spool = MemorySpool(self.clock)
        self.agent = HeldAgent(self.clock) if agent is None else agent
        self.registry = ServerRegistry(
            self.config.proxy_servers, success_threshold=1, failure_threshold=1
        )
        self.events: list[dict] = []
        self.scheduler = Scheduler(
            spool=self.spool, agent=self.agent, config_provider=lambda: self.config,
            registry=self.registry, reactor=self.clock, reporting_mta="relay.test",
            **options,
        )
        self.scheduler.log = Logger(observer=self.events.append)

    def submit(self, binding="default", mail_from="alice@src.test",
               rcpt_to=("bob@dst.test",), **kw):
        message = self.spool.add(binding, mail_from, rcpt_to, **kw)
        self.scheduler.submit(message)
        return message

    def proxy(self, up):
        server = self.config.proxy_servers[0]
        if up:
            self.registry.record_success(server, at=self.clock.seconds())
        else:
            self.registry.record_failure(server, at=self.clock.seconds(), error="refused")


def running(w):
    """Start ``w``'s scheduler; afterwards stop it and check that no timer is left."""
    w.scheduler.startService()
    yield w
    if w.scheduler.running:
        stopping = w.scheduler.stopService()
        for _, d in w.agent.pending():
            d.cancel()
        w.clock.advance(3600)
        assert stopping.called
    assert not w.clock.getDelayedCalls()


def parse(content):
    return email.message_from_bytes(content, policy=email.policy.default)


def delivery_status(dsn):
    report = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    return report.as_string()


def human_part(dsn):
    return next(p for p in dsn.walk() if p.get_content_type() == "text/plain").get_content()


def unreachable(outbound):
    """What the agent reports when no MX of the domain answered at all."""
    error = "no MX of dst.test answered: connection refused"
    return attrs.evolve(result_for(outbound, 451, f"4.4.1 {error}"), error=error)




THROTTLED = CONFIG + """
binding warm {
  max_connections = 10
  message_expiration = 86400
  outbound_throttle_messages = 3/3600
  domain gmail.test {
    outbound_throttle_messages = 2/600
  }
}
binding warm2 {
  max_connections = 10
  message_expiration = 86400
  outbound_throttle_messages = 3/3600
}
binding free {
  max_connections = 10
}
"""


def answer_all(w, code=250):
    for i, (_, d) in enumerate(w.agent.calls):
        if not d.called:
            w.agent.answer(i, code)


def states(w):
    """{(binding, domain): QueueState} from ``queue_states()``."""
    return {(s.binding, s.domain): s for s in w.scheduler.queue_states()}


class InstantAgent:
    def __init__(self, code):
        self.code = code
        self.calls = []

    def deliver(self, outbound):
        self.calls.append(outbound)
        return defer.succeed(result_for(outbound, self.code, "4.0.0 later"))
