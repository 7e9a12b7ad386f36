"""End-to-end: ``twistd hatwist`` with ``workers = 2`` as operators run it.

A real supervisor process with two real worker processes, mail in over SMTP from the
standard library's client, out through the real egress HAProxy to the recording sink.
kill -9, SIGHUP and SIGTERM are real signals to real processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import smtplib
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.web.client import Agent, readBody

from hatwist.workers import status_socket
from hatwist.workers._status import _WorkerSockets
from tests.service._relay import (
    make_message,
    open_session,
    submit_blocking,
    wait_refused,
)
from tests.workers._rig import DEADLINE, WorkersRig, wait_for_lines

pytestmark = pytest.mark.integration

SENDER = "sender@src.test"
TWO = "workers = 2\nmax_inbound_connections_per_ip = 40\n"


@pytest_twisted.async_yield_fixture
async def rig(reactor, dns_server, smtp_sink, haproxy, tmp_path):
    dns_server.add_mx("dest.test", [(10, "mx.dest.test")])
    dns_server.add_a("mx.dest.test", smtp_sink.host)
    setup = WorkersRig(reactor, dns_server, smtp_sink, haproxy, str(tmp_path))
    try:
        yield setup
    finally:
        for relay in setup.relays:
            await relay.stop()


async def start_two(rig: WorkersRig, **options):
    rig.write_config(TWO, **options)
    relay = await rig.relay().start()
    await wait_for_lines(relay, f"InboundFactory starting on {rig.listen}", 2)
    document = await rig.wait_status(
        lambda d: len(d["workers"]) == 2 and all(w["answered"] for w in d["workers"]))
    return relay, {w["worker"]: w["pid"] for w in document["workers"]}


async def worker_status(rig: WorkersRig, worker: int) -> dict:
    """One worker's own /status, read from its private socket as the supervisor does."""
    agent = Agent.usingEndpointFactory(
        rig.reactor, _WorkerSockets(rig.reactor, lambda n: status_socket(rig.spool_dir, n)))
    response = await agent.request(b"GET", f"http://worker-{worker}/status".encode())
    return json.loads(await readBody(response).addTimeout(DEADLINE, rig.reactor))


def pending(document: dict) -> int:
    return sum(queue["pending"] for queue in document["queues"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_two_workers_deliver_and_the_status_listener_shows_the_whole_relay(rig):
    relay, pids = await start_two(rig)
    assert len(set(pids.values())) == 2 and relay.pid not in pids.values()
    for worker in (1, 2):  # each worker's lines say which worker wrote them
        await wait_for_lines(relay, f"[worker-{worker} hatwist.tap.RelayService#info] hatwist", 1)
    total = 12
    sent = await defer.gatherResults([
        threads.deferToThread(submit_blocking, rig.listen, SENDER, ["a@dest.test"],
                              make_message(f"both-{i}@t"))
        for i in range(total)
    ]).addTimeout(DEADLINE, rig.reactor)
    assert all(s.accepted for s in sent), sent
    await rig.sink.wait_until(lambda: len(rig.delivered()) == total, timeout=DEADLINE)
    # The scheduler counts a delivery once the sink has answered: poll until both have.
    document = await rig.wait_status(
        lambda d: d["deliveries"]["counters"]["delivered"] == total)
    [proxy] = document["proxies"]
    assert proxy["state"] == "plumbed"
    assert proxy["workers"] == {"1": "plumbed", "2": "plumbed"}
    metrics = (await rig.get("/metrics")).decode()
    assert f"hatwist_scheduler_delivered_total {float(total)}" in metrics
    for worker in ("1", "2"):
        assert f'hatwist_worker_up{{worker="{worker}"}} 1.0' in metrics
        assert (f'hatwist_proxy_up{{server="{rig.haproxy.server_text}",worker="{worker}"}} 1.0'
                in metrics)
    assert metrics.count("# TYPE hatwist_info gauge") == 1
    # hatwist status reads the supervisor like a single relay.
    from hatwist.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = await threads.deferToThread(
            main, ["status", "--url", f"http://127.0.0.1:{rig.status_listen}"])
    assert code == 0 and rig.haproxy.server_text in out.getvalue()
    page = (await rig.get("/")).decode()
    assert rig.haproxy.server_text in page


CLIENTS = 8
PER_CLIENT = 15


def _submit_each_in_its_own_session(client: int, accepted: list, reactor, progress) -> None:
    """One session per message, so new connections spread over both workers and keep
    coming after the kill; a session the kill breaks is simply not accepted."""
    for i in range(PER_CLIENT):
        message_id = f"kill-{client}-{i}@t"
        try:
            result = submit_blocking(CLIENT_PORT[0], SENDER, ["a@dest.test"],
                                     make_message(message_id))
        except (OSError, smtplib.SMTPException):
            continue
        if result.accepted:
            accepted.append(message_id)
            reactor.callFromThread(progress)


CLIENT_PORT = [0]


@pytest_twisted.ensureDeferred
async def test_kill_9_of_a_worker_restarts_it_on_its_partition_and_nothing_is_lost(rig):
    """The egress proxy is down while mail comes in, so everything accepted is in the
    spool partitions when worker 1 is killed; its successor must deliver its share."""
    await rig.haproxy.stop()
    relay, pids = await start_two(rig)
    CLIENT_PORT[0] = rig.listen
    accepted: list[str] = []
    enough: defer.Deferred[None] = defer.Deferred()

    def progress() -> None:
        if len(accepted) >= CLIENTS * PER_CLIENT // 3 and not enough.called:
            enough.callback(None)

    clients = [threads.deferToThread(_submit_each_in_its_own_session, c, accepted,
                                     rig.reactor, progress) for c in range(CLIENTS)]
    await enough.addTimeout(DEADLINE, rig.reactor)
    before_kill = await worker_status(rig, 1)
    assert pending(before_kill) > 0, "worker 1 accepted nothing: the kill would prove nothing"
    os.kill(pids[1], signal.SIGKILL)
    await defer.gatherResults(clients).addTimeout(DEADLINE * 2, rig.reactor)

    document = await rig.wait_status(lambda d: d["workers"][0]["restarts"] == 1
                                     and d["workers"][0]["answered"])
    assert document["workers"][0]["pid"] != pids[1]
    assert document["workers"][1]["pid"] == pids[2]  # the sibling was left alone
    assert not alive(pids[1])
    await relay.wait_for_log("worker 1 (pid", since=0)
    await wait_for_lines(relay, "died (signal 9)", 1)
    # The successor recovered its predecessor's partition: at least what worker 1 held.
    assert pending(await worker_status(rig, 1)) >= pending(before_kill)
    # Nothing that got 250 is missing: all of it waits in the two partitions.
    assert pending(await rig.status()) >= len(accepted)

    await rig.haproxy.start()
    wanted = set(accepted)
    await rig.sink.wait_until(lambda: wanted <= rig.delivered().keys(), timeout=DEADLINE * 2)
    delivered = rig.delivered()
    submitted = {f"kill-{c}-{i}@t" for c in range(CLIENTS) for i in range(PER_CLIENT)}
    assert delivered.keys() <= submitted
    # Nothing was delivered before the kill, so no delivery was cut short: no duplicates.
    assert all(len(copies) == 1 for copies in delivered.values())
    print(f"kill -9 of worker 1: {len(accepted)} got 250, worker 1 held "
          f"{pending(before_kill)} at the kill, {len(delivered)} delivered once each")


def _submit_patiently(port: int, message_id: str) -> tuple[bool, float]:
    """One transaction that waits up to DEADLINE for the banner (a worker restarting):
    whether it got its 250, and how long it took."""
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test",
                      timeout=DEADLINE) as client:
        client.ehlo()
        client.mail(SENDER)
        client.rcpt("a@dest.test")
        code, _ = client.data(make_message(message_id).replace("\n", "\r\n").encode())
        return code == 250, time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_connections_queued_for_a_dead_worker_are_served_by_its_successor(rig):
    """Each worker has its own listening socket (SO_REUSEPORT), and the supervisor keeps
    it open: what the kernel hashes to a killed worker waits in that socket's queue for
    the successor instead of being reset."""
    relay, pids = await start_two(rig)
    mark = relay.mark()
    os.kill(pids[1], signal.SIGKILL)
    count = 20  # each lands on worker 1's socket with probability 1/2
    results = await defer.gatherResults([
        threads.deferToThread(_submit_patiently, rig.listen, f"queued-{i}@t")
        for i in range(count)
    ]).addTimeout(DEADLINE * 2, rig.reactor)
    assert all(ok for ok, _ in results), results  # none reset or refused: all got 250
    document = await rig.wait_status(lambda d: d["workers"][0]["restarts"] == 1)
    successor = document["workers"][0]["pid"]
    assert successor != pids[1]
    served = relay.lines_with("[worker-1 ", "accepted ", since=mark)
    assert served, relay.tail(60)  # the successor took what waited on worker 1's socket
    wanted = {f"queued-{i}@t" for i in range(count)}
    await rig.sink.wait_until(lambda: wanted <= rig.delivered().keys(), timeout=DEADLINE)
    waits = sorted(seconds for _, seconds in results)
    print(f"kill -9 of worker 1: {len(served)} of {count} connections made while it was "
          f"dead were served by its successor (pid {successor}), the rest by worker 2; "
          f"transactions took {waits[0]:.2f} to {waits[-1]:.2f} s")


@pytest_twisted.ensureDeferred
async def test_sighup_is_validated_once_by_the_supervisor_then_reaches_every_worker(rig):
    relay, _ = await start_two(rig)
    mark = relay.mark()
    rig.write_config(TWO, retry_interval=7)
    relay.signal("HUP")
    await wait_for_lines(relay, "config reloaded from", 2, since=mark)
    assert relay.lines_with("SIGHUP sent to 2 workers", since=mark)

    mark = relay.mark()
    with open(rig.config_path, "a", encoding="utf-8") as f:
        f.write("max_connections = lots\n")
    relay.signal("HUP")
    await wait_for_lines(relay, "config reload refused", 1, since=mark)
    # Give a wrongly forwarded SIGHUP time to show: a worker would log it within this.
    await task.deferLater(rig.reactor, 1.5)
    assert len(relay.lines_with("config reload refused", since=mark)) == 1
    assert not relay.lines_with("config reloaded from", since=mark)
    assert not relay.lines_with("SIGHUP sent", since=mark)


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_a_transaction_in_flight_finish_and_stops_every_worker(rig):
    relay, pids = await start_two(rig, shutdown_grace=10)
    session = await threads.deferToThread(open_session, rig.listen)
    try:
        assert (await threads.deferToThread(session.mail, SENDER))[0] == 250
        assert (await threads.deferToThread(session.rcpt, "a@dest.test"))[0] == 250
        mark = relay.mark()
        relay.signal("TERM")
        # Both workers stop listening while the session stays open.
        await wait_for_lines(relay, f"(TCP Port {rig.listen} Closed)", 2, since=mark)
        await wait_refused(rig.reactor, rig.listen, DEADLINE)
        content = make_message("term-1@t").replace("\n", "\r\n").encode()
        try:
            code, reply = await threads.deferToThread(session.data, content)
        except smtplib.SMTPException as e:
            raise AssertionError(relay.tail(60)) from e
        assert code == 250, reply
    finally:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            await threads.deferToThread(session.close)
    status = await relay.exited(DEADLINE)
    assert status is not None
    for worker, pid in pids.items():
        assert relay.lines_with(f"worker {worker} (pid {pid}) stopped")
        assert not alive(pid)
