"""End-to-end tests of ``hatwist queue`` against a real ``twistd hatwist`` process.

The relay, HAProxy, the sink and the DNS are the real parts of tests.service.test_relay's
Rig; ``hatwist queue`` runs as its own process with ``--config FILE``, as an operator runs
it, and talks to the relay over the control socket the config names (its default:
control.sock in spool_dir).
"""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, utils

from hatwist.scheduler._bulk import SLICE
from tests.service._relay import ROOT
from tests.service.test_relay import DEADLINE, SENDER
from tests.service.test_relay import rig as rig  # the fixture

pytestmark = pytest.mark.integration


async def queue(rig, *args: str) -> tuple[int, str, str]:
    """Run ``hatwist queue ARGS --config FILE``; (exit status, stdout, stderr)."""
    argv = ["-m", "hatwist.cli", "queue", *args, "--config", rig.config_path]
    out, err, status = await utils.getProcessOutputAndValue(
        sys.executable, argv, env=dict(os.environ), path=str(ROOT),
    ).addTimeout(DEADLINE, rig.reactor)
    return status, out.decode(), err.decode()


async def listed(rig, *args: str) -> tuple[list[dict], dict]:
    status, out, err = await queue(rig, "list", "--json", *args)
    assert status == 0, err
    *rows, summary = [json.loads(line) for line in out.splitlines()]
    return rows, summary


async def started(rig, **options):
    """The relay, once its control socket listens (after its SMTP listener)."""
    rig.write_config(**options)
    return await answering(rig, await rig.relay().start())


async def answering(rig, relay):
    await relay.wait_for_log("control socket", since=0, timeout=DEADLINE)
    return relay


async def waiting_for_proxy(rig, relay, message_id: str) -> None:
    await relay.wait_for_log(f"{message_id} binding default domain dest.test: waiting for a "
                             "plumbed proxy", since=0, timeout=DEADLINE)


@pytest_twisted.ensureDeferred
async def test_list_and_show_a_message_waiting_for_an_unplumbed_proxy(rig):
    await rig.haproxy.stop()
    relay = await started(rig)
    message_id = await rig.send("list-1@t", ["a@dest.test", "b@dest.test"])
    await waiting_for_proxy(rig, relay, message_id)

    rows, summary = await listed(rig)
    assert [(r["id"], r["state"], r["from"], r["pending"]) for r in rows] == [
        (message_id, "waiting_for_proxy", SENDER, 2)]
    assert summary == {"total": 1, "shown": 1}
    assert (await listed(rig, "--domain", "other.test"))[1]["total"] == 0

    status, out, err = await queue(rig, "list")
    assert status == 0, err
    assert message_id in out and "waiting_for_proxy" in out and "1 message(s)" in out

    status, out, err = await queue(rig, "show", message_id, "--json")
    assert status == 0, err
    shown = json.loads(out)
    assert [r["address"] for r in shown["recipients"]] == ["a@dest.test", "b@dest.test"]
    assert {r["status"] for r in shown["recipients"]} == {"pending"}
    assert shown["recipients"][0]["reason"], "the last reason: why it waits"
    assert shown["queues"][0]["domain"] == "dest.test"
    status, out, _ = await queue(rig, "show", message_id)
    assert "a@dest.test" in out and "waiting_for_proxy" in out and f"<{SENDER}>" in out

    status, _, err = await queue(rig, "show", "0005f1c2a3b4c5-0a1b2c3d4e")
    assert status == 1
    assert err == "hatwist queue: message 0005f1c2a3b4c5-0a1b2c3d4e is not in the queue\n"


@pytest_twisted.ensureDeferred
async def test_held_mail_stays_when_the_proxy_comes_back_and_goes_after_release(rig):
    await rig.haproxy.stop()
    relay = await started(rig)
    held_id = await rig.send("held-1@t")
    await waiting_for_proxy(rig, relay, held_id)
    status, out, err = await queue(rig, "hold", held_id)
    assert (status, out) == (0, f"{held_id}: held\n"), err
    assert (await listed(rig, "--state", "held"))[0][0]["id"] == held_id

    await rig.haproxy.start()
    await rig.send("free-1@t")  # delivered once the proxy is back: the held one is not
    await rig.sink.wait_until(lambda: "free-1@t" in rig.delivered(), timeout=DEADLINE)
    assert "held-1@t" not in rig.delivered()

    status, out, err = await queue(rig, "release", held_id)
    assert (status, out) == (0, f"{held_id}: released\n"), err
    await rig.sink.wait_until(lambda: "held-1@t" in rig.delivered(), timeout=DEADLINE)
    assert len(rig.delivered()["held-1@t"]) == 1
    assert relay.lines_with(held_id, "held by the operator")


@pytest_twisted.ensureDeferred
async def test_flush_of_a_backing_off_queue_delivers_at_once(rig):
    rig.sink.recipient_replies["a@dest.test"] = (451, "4.7.1 come back later")
    relay = await started(rig, retry_interval=3600)
    message_id = await rig.send("flush-1@t")
    await relay.wait_for_log(f"{message_id} binding default domain dest.test: 1 temporary",
                             since=0, timeout=DEADLINE)
    rows, _ = await listed(rig)
    assert [r["state"] for r in rows] == ["backoff"]
    del rig.sink.recipient_replies["a@dest.test"]

    status, out, err = await queue(rig, "flush", "--domain", "dest.test")
    assert (status, out) == (0, "flushed 1 queue(s): 1 message(s) due now\n"), err
    await rig.sink.wait_until(lambda: "flush-1@t" in rig.delivered(), timeout=DEADLINE)


@pytest_twisted.ensureDeferred
async def test_delete_leaves_no_mail_and_logs_the_operators_uid(rig):
    await rig.haproxy.stop()
    relay = await started(rig)
    message_id = await rig.send("delete-1@t")
    await waiting_for_proxy(rig, relay, message_id)
    status, out, err = await queue(rig, "delete", message_id)
    assert (status, out) == (0, f"{message_id}: deleted\n"), err
    assert relay.lines_with(message_id, f"deleted by the operator (uid {os.getuid()}): no DSN")
    assert (await listed(rig))[1]["total"] == 0

    await rig.haproxy.start()
    await rig.send("after-delete@t")
    await rig.sink.wait_until(lambda: "after-delete@t" in rig.delivered(), timeout=DEADLINE)
    assert set(rig.delivered()) == {"after-delete@t"}, "no copy of it, no DSN"
    await relay.stop()
    relay = await answering(rig, await rig.relay().start())  # nor is it back from the spool
    assert (await listed(rig))[1]["total"] == 0


@pytest_twisted.ensureDeferred
async def test_bounce_spools_a_dsn_to_the_sender(rig):
    await rig.haproxy.stop()
    relay = await started(rig)
    message_id = await rig.send("bounce-1@t")
    await waiting_for_proxy(rig, relay, message_id)
    status, out, err = await queue(rig, "bounce", message_id)
    assert (status, out) == (0, f"{message_id}: bounced (DSN to <{SENDER}>)\n"), err
    await relay.wait_for_log(f"spooled to <{SENDER}>", since=0, timeout=DEADLINE)
    rows, _ = await listed(rig)
    assert [r["from"] for r in rows] == [""], "only the DSN is left, from the null sender"

    await rig.haproxy.start()
    await rig.sink.wait_for(1, timeout=DEADLINE)
    [dsn] = rig.sink.messages
    assert (dsn.mail_from, dsn.rcpt_tos) == ("", (SENDER,))
    assert b"returned to the sender by the relay's operator" in dsn.data


@pytest_twisted.ensureDeferred
async def test_a_filtered_hold_and_delete_of_more_than_a_slice_stream_every_outcome(rig):
    """More messages than one slice (hatwist.scheduler._bulk.SLICE): the real spool's
    writes of each slice are done before the next, and every outcome is a line."""
    await rig.haproxy.stop()
    relay = await started(rig)
    count = SLICE + 44
    ids = []
    for start in range(0, count, 20):  # 20 sessions at a time
        ids += await defer.gatherResults([defer.ensureDeferred(rig.send(f"bulk-{n}@t"))
                                          for n in range(start, min(count, start + 20))])
    # the queue waits for a proxy after the first attempt (which message's, the race
    # of 20 sessions decides), the rest behind it without a line each
    await relay.wait_for_log("waiting for a plumbed proxy", since=0, timeout=DEADLINE)
    assert (await listed(rig))[1]["total"] == count
    status, out, err = await queue(rig, "hold", "--domain", "dest.test")
    assert status == 0, err
    *lines, summary = out.splitlines()
    assert sorted(lines) == sorted(f"{i}: held" for i in ids)
    assert summary == f"{count} message(s) matched: held {count}"
    assert relay.lines_with("queue hold by the operator", f"{count} message(s) matched")
    assert (await listed(rig, "--state", "held"))[1]["total"] == count

    await relay.stop()  # every hold was written: all of them are held after a restart
    relay = await answering(rig, await rig.relay().start())
    assert (await listed(rig, "--state", "held"))[1]["total"] == count
    status, out, err = await queue(rig, "delete", "--state", "held")
    assert status == 0, err
    assert out.splitlines()[-1] == f"{count} message(s) matched: deleted {count}"
    assert (await listed(rig))[1]["total"] == 0
    await relay.stop()


@pytest_twisted.ensureDeferred
async def test_not_running_is_one_exact_line_and_the_socket_is_mode_0600(rig):
    rig.write_config()
    socket_path = os.path.join(rig.spool_dir, "control.sock")
    status, out, err = await queue(rig, "list")
    assert (status, out) == (1, "")
    assert err == (f"hatwist queue: no relay is listening on {socket_path} "
                   "(is it running with this config?)\n")

    relay = await answering(rig, await rig.relay().start())
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    assert (await listed(rig))[1] == {"total": 0, "shown": 0}
    await relay.stop()
    assert not os.path.exists(socket_path), "removed at stop"
    assert (await queue(rig, "list"))[0] == 1


@pytest_twisted.ensureDeferred
async def test_a_hold_outlives_a_restart_of_the_relay(rig):
    relay = await started(rig)
    await rig.haproxy.stop()
    await relay.wait_for_log("-> unplumbed", since=0, timeout=DEADLINE)
    message_id = await rig.send("restart-held@t")
    await waiting_for_proxy(rig, relay, message_id)
    assert (await queue(rig, "hold", message_id))[0] == 0
    await relay.stop()

    await rig.haproxy.start()
    relay = await answering(rig, await rig.relay().start())
    rows, _ = await listed(rig, "--state", "held")
    assert [r["id"] for r in rows] == [message_id], "still held after the restart"
    await rig.send("restart-free@t")
    await rig.sink.wait_until(lambda: "restart-free@t" in rig.delivered(), timeout=DEADLINE)
    assert "restart-held@t" not in rig.delivered()
    assert (await queue(rig, "release", message_id))[0] == 0
    await rig.sink.wait_until(lambda: "restart-held@t" in rig.delivered(), timeout=DEADLINE)
