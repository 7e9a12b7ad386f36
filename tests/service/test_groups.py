# ruff: noqa: F811
"""Binding groups as a choice, end to end (issue 14 item 4).

A real ``twistd hatwist`` (tests.service._relay) with a binding_group of two bindings,
blue (127.0.0.10) and green (127.0.0.11), and the smtp-mode health check, which proves
each source's path through the real HAProxy against a second sink (127.0.0.21). Mail
is submitted with ``X-Binding-Group: pool``. The health sink then refuses blue's source
address, as a blocklist would: the check unplumbs that path, and the next messages
leave from green's address, which the MX sink (127.0.0.20) sees as their peer.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import task

from hatwist.lab.sink import SMTPSink
from tests.service._relay import make_message
from tests.service.test_relay import DEFAULT_SOURCE, rig  # noqa: F401

pytestmark = pytest.mark.integration

DEADLINE = 20.0
HEALTH_HOST = "127.0.0.21"
BLUE, GREEN = "127.0.0.10", "127.0.0.11"
GROUP = """
binding_group pool {
  binding blue {
    ha_proxy_src_addr = 127.0.0.10
  }
  binding green {
    ha_proxy_src_addr = 127.0.0.11
  }
}
"""


@pytest_twisted.async_yield_fixture
async def health_sink(reactor):
    sink = await SMTPSink.start(reactor, host=HEALTH_HOST)
    try:
        yield sink
    finally:
        await sink.stop()


async def send(rig, message_id: str) -> None:
    text = make_message(message_id).replace("\n\n", "\nX-Binding-Group: pool\n\n", 1)
    sent = await rig.submit(["a@dest.test"], text)
    assert sent.accepted, sent


async def logged(reactor, relay, needle: str, count: int, since: int = 0) -> None:
    """Wait until ``count`` lines with ``needle`` are in the relay's log: it writes its log
    in batches, so a line may come a little after the sink saw the message."""
    for _ in range(int(DEADLINE / 0.05)):
        if len(relay.lines_with(needle, since=since)) >= count:
            return
        await task.deferLater(reactor, 0.05)
    pytest.fail(f"not {count} lines with {needle!r}:\n{relay.tail()}")


def peer_of(rig, message_id: str) -> str:
    [message] = rig.delivered()[message_id]
    return message.peer[0]


@pytest_twisted.ensureDeferred
async def test_group_mail_moves_to_the_other_binding_when_the_check_unplumbs_a_source(
        rig, health_sink, reactor):
    rig.write_config(bindings={"default": DEFAULT_SOURCE}, extra=GROUP)
    with open(rig.config_path) as f:
        text = f.read()
    with open(rig.config_path, "w") as f:
        f.write(text.replace("ha_proxy_client {\n", "ha_proxy_client {\n"
                             "  health_check_mode = smtp\n"
                             f'  health_check_target = "{HEALTH_HOST}:{health_sink.port}"\n'))
    relay = await rig.relay().start()

    def checked_both() -> bool:  # the smtp check reached the target from each source
        return {s.peer[0] for s in health_sink.sessions} >= {BLUE, GREEN}

    try:
        await health_sink.wait_until(checked_both, timeout=DEADLINE)
    except Exception:
        pytest.fail("the check never tried both sources; relay log:\n" + relay.tail())

    # Both paths plumbed: equal weights take turns, blue first (file order).
    for n in (1, 2):
        await send(rig, f"both-{n}@t")
    await rig.sink.wait_for(2, timeout=DEADLINE)
    assert sorted(peer_of(rig, f"both-{n}@t") for n in (1, 2)) == [BLUE, GREEN]
    await logged(reactor, relay, "(group pool) to dest.test", 2)

    # The health target now refuses blue's source: the check unplumbs that path only.
    mark = relay.mark()
    health_sink.refuse_from[BLUE] = (554, "5.7.1 127.0.0.10 is listed")
    await relay.wait_for_log(f"from source {BLUE} plumbed -> unplumbed", since=mark,
                             timeout=DEADLINE)
    for n in (1, 2, 3):
        await send(rig, f"after-{n}@t")
    await rig.sink.wait_for(5, timeout=DEADLINE)
    assert [peer_of(rig, f"after-{n}@t") for n in (1, 2, 3)] == [GREEN] * 3
    # The relay writes its log in batches: wait for the attempts' lines, not only the sink.
    await logged(reactor, relay, "binding green (group pool) to dest.test", 3, since=mark)
    # Chosen by the health checker's knowledge: no attempt even tried blue's dead path.
    assert relay.lines_with("binding blue (group pool)", since=mark) == []
    assert relay.lines_with("waiting for a plumbed proxy") == []  # moved, never waited


@pytest_twisted.ensureDeferred
async def test_a_group_is_refused_unless_every_binding_allows_the_submitter(rig):
    guarded = GROUP.replace("    ha_proxy_src_addr = 127.0.0.10\n",
                            "    ha_proxy_src_addr = 127.0.0.10\n"
                            "    allowed_submitters = 127.0.0.99/32\n")
    rig.write_config(bindings={"default": DEFAULT_SOURCE}, extra=guarded)
    await rig.relay().start()
    refused = await rig.submit(["a@dest.test"], make_message("g-no@t").replace(
        "\n\n", "\nX-Binding-Group: pool\n\n", 1))
    assert refused.data[0] == 550
    assert ('binding_group "pool" (every one of its bindings must allow it) may not be '
            "used by 127.0.0.1") in refused.data[1]
    unknown = await rig.submit(["a@dest.test"], make_message("g-unknown@t").replace(
        "\n\n", "\nX-Binding-Group: nope\n\n", 1))
    assert unknown.data == (550, '5.7.1 Unknown binding_group "nope" (or it has no bindings)')
    assert rig.spooled() == []
