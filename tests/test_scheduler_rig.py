"""
End-to-end tests of hatwist.scheduler with the real parts: the real Spool, the real
DeliveryAgent, the in-process DNS and the recording SMTP sink (all on 127.0.0.0/8).

They pin what a fake agent cannot: a cancelled attempt at shutdown really stops (the
real agent's abort looks like a lost connection), a session lost at the final dot does
not pause its queue, and a refused recipient's DSN reaches the sender while another
recipient is still being retried.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from hatwist.config import parse_config
from hatwist.delivery.attempt import DeliveryAgent
from hatwist.health import ServerRegistry
from hatwist.mx import MXResolver, build_resolver
from hatwist.scheduler import Scheduler
from hatwist.spool import FAILED, PENDING, Spool
from tests.rig.sink import END_OF_DATA, SILENT, SMTPSink
from tests.test_scheduler_support import delivery_status, parse

pytestmark = pytest.mark.integration

#: Deadline on every awaited Deferred: a broken test fails instead of hanging.
DEADLINE = 20.0
GRACE = 1


def config_text(port: int, extra: str = "smtp_timeout = 30") -> str:
    return f"""
retry_interval = 900
shutdown_grace = {GRACE}
remote_smtp_port = {port}
connect_timeout = 2
tls = no
{extra}
"""


class Relay:
    """A Scheduler over the real Spool and DeliveryAgent, on the real reactor."""

    def __init__(self, reactor, tmp_path, dns_server, text):
        self.reactor = reactor
        self.config = parse_config(text)
        self.registry = ServerRegistry((), success_threshold=1, failure_threshold=1)
        self.spool = Spool(str(tmp_path / "spool"), reactor=reactor,
                           threadpool=reactor.getThreadPool())
        resolver = MXResolver(build_resolver(dns_server.address, reactor=reactor),
                              reactor=reactor)
        self.agent = DeliveryAgent(self.config, self.registry, resolver, reactor=reactor)
        self.scheduler = Scheduler(
            spool=self.spool, agent=self.agent, config_provider=lambda: self.config,
            registry=self.registry, reactor=reactor, reporting_mta="relay.test",
        )

    async def send(self, mail_from, rcpt_to, body=b"Subject: hi\r\n\r\nbody\r\n"):
        message = await self.spool.store("default", mail_from, rcpt_to, body)
        self.scheduler.submit(message)
        return message

    async def stop(self):
        if self.scheduler.running:
            await self.scheduler.stopService().addTimeout(DEADLINE, self.reactor)
        await self.agent.close()

    async def close(self):
        await self.stop()
        await self.spool.close().addTimeout(DEADLINE, self.reactor)


@pytest_twisted.async_yield_fixture
async def relay_for(reactor, tmp_path, dns_server):
    made = []

    def make(text):
        made.append(Relay(reactor, tmp_path, dns_server, text))
        made[-1].scheduler.startService()
        return made[-1]

    try:
        yield make
    finally:
        for relay in made:
            await relay.close()


def mx(dns_server, domain, *addresses):
    dns_server.add_mx(domain, [(10 * (i + 1), f"mx{i}.{domain}")
                               for i in range(len(addresses))])
    for i, address in enumerate(addresses):
        dns_server.add_a(f"mx{i}.{domain}", address)


def commands(sink):
    return [c.split(":")[0].split(" ")[0].upper() for s in sink.sessions for c in s.commands]


@pytest_twisted.ensureDeferred
async def test_an_attempt_cancelled_at_shutdown_tries_no_further_mx_and_stays_spooled(
    reactor, smtp_sink, dns_server, relay_for
):
    second = await SMTPSink.start(reactor, host="127.0.0.21", port=smtp_sink.port)
    try:
        smtp_sink.replies["MAIL"] = SILENT  # the best MX stalls mid-transaction
        mx(dns_server, "dest.test", "127.0.0.20", "127.0.0.21")
        relay = relay_for(config_text(smtp_sink.port))
        message = await relay.send("sender@src.test", ["rcpt@dest.test"])
        await smtp_sink.wait_until(lambda: "MAIL" in commands(smtp_sink), timeout=DEADLINE)

        started = reactor.seconds()
        await relay.scheduler.stopService().addTimeout(DEADLINE, reactor)
        took = reactor.seconds() - started
        # The cancel ended the attempt: the next MX never saw a session, so nothing was
        # delivered behind the shutdown's back, and the stop kept to shutdown_grace
        # (give or take a loaded box), not smtp_timeout (30 s).
        assert second.sessions == []
        assert took < GRACE + 5
        [kept] = await relay.spool.recover().addTimeout(DEADLINE, reactor)
        assert kept.id == message.id
        assert [(r.status, r.attempts) for r in kept.recipients] == [(PENDING, 0)]
        await smtp_sink.wait_closed(timeout=DEADLINE)
    finally:
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_a_session_lost_at_the_final_dot_does_not_pause_the_domain(
    reactor, smtp_sink, dns_server, relay_for
):
    smtp_sink.replies[END_OF_DATA] = SILENT  # every session times out after the dot
    mx(dns_server, "dest.test", "127.0.0.20")
    relay = relay_for(config_text(smtp_sink.port, "smtp_timeout = 1\nmax_connections = 1"))
    first = await relay.send("sender@src.test", ["a@dest.test"])
    await relay.send("sender@src.test", ["b@dest.test"])
    # max_connections = 1: the second message starts only when the first attempt ended
    # (at the dot's timeout), and at once, not a retry_interval (900 s) later.
    await smtp_sink.wait_until(
        lambda: len(smtp_sink.sessions) >= 2 and smtp_sink.sessions[1].rcpt_tos,
        timeout=DEADLINE)
    assert smtp_sink.sessions[1].rcpt_tos == ["b@dest.test"]
    [state] = [s for s in relay.scheduler.queue_states() if s.domain == "dest.test"]
    assert state.state != "paused"
    await relay.stop()
    saved = {m.id: m for m in await relay.spool.recover().addTimeout(DEADLINE, reactor)}
    assert saved[first.id].recipients[0].attempts == 1  # deferred, retried later


@pytest_twisted.ensureDeferred
async def test_a_refused_recipient_is_bounced_while_another_is_still_retried(
    reactor, smtp_sink, dns_server, relay_for
):
    smtp_sink.recipient_replies["bad@dest.test"] = (550, "5.1.1 no such user")
    smtp_sink.recipient_replies["busy@dest.test"] = (452, "4.2.2 mailbox full")
    mx(dns_server, "dest.test", "127.0.0.20")
    mx(dns_server, "src.test", "127.0.0.20")
    relay = relay_for(config_text(smtp_sink.port))
    message = await relay.send("sender@src.test", ["busy@dest.test", "bad@dest.test"])

    await smtp_sink.wait_until(
        lambda: any(m.mail_from == "" for m in smtp_sink.messages), timeout=DEADLINE)
    [dsn] = [m for m in smtp_sink.messages if m.mail_from == ""]
    assert dsn.rcpt_tos == ("sender@src.test",)
    report = delivery_status(parse(dsn.data))
    assert "Final-Recipient: rfc822; bad@dest.test" in report
    assert "busy@dest.test" not in report
    # The original stays for its other recipient, with the bounce written down (read
    # once the scheduler has stopped: the spool's recovery is not for a live spool).
    await relay.stop()
    saved = {m.id: m for m in await relay.spool.recover().addTimeout(DEADLINE, reactor)}
    busy, bad = saved[message.id].recipients
    assert (busy.status, busy.bounced) == (PENDING, False)
    assert (bad.status, bad.bounced) == (FAILED, True)


@pytest_twisted.ensureDeferred
async def test_a_delay_warning_reaches_the_sender_once_while_delivery_goes_on(
    reactor, smtp_sink, dns_server, relay_for
):
    smtp_sink.recipient_replies["busy@dest.test"] = (452, "4.2.2 mailbox full")
    mx(dns_server, "dest.test", "127.0.0.20")
    mx(dns_server, "src.test", "127.0.0.20")
    text = config_text(smtp_sink.port).replace("retry_interval = 900", "retry_interval = 1")
    relay = relay_for(text + "delay_warning_time = 1\n")
    message = await relay.send("sender@src.test", ["busy@dest.test"])
    # The first pass ends before a second has passed; the retry a second later is the
    # first pass to end after delay_warning_time.
    await smtp_sink.wait_until(
        lambda: any(m.mail_from == "" for m in smtp_sink.messages), timeout=DEADLINE)
    [warning] = [m for m in smtp_sink.messages if m.mail_from == ""]
    report = delivery_status(parse(warning.data))
    assert "Action: delayed" in report and "Final-Recipient: rfc822; busy@dest.test" in report
    assert "Status: 4.2.2" in report

    def tries():
        return sum(s.rcpt_tos.count("busy@dest.test") for s in smtp_sink.sessions)

    seen = tries()
    await smtp_sink.wait_until(lambda: tries() >= seen + 2, timeout=DEADLINE)
    await relay.stop()
    assert [m.mail_from for m in smtp_sink.messages] == [""]  # still one warning
    saved = {m.id: m for m in await relay.spool.recover().addTimeout(DEADLINE, reactor)}
    assert saved[message.id].delay_warned is True
