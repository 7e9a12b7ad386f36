"""
What senders and operators see of a real relay (``twistd -n hatwist``, real HAProxy, DNS
and sink; the fixtures are tests.service.test_relay's): a SIGHUP with a shorter
``retry_interval`` shortens a running pause of an unreachable domain and its message's
backoff at once.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.service.test_relay import DEADLINE, rig  # noqa: F401  (rig: the fixture)

pytestmark = pytest.mark.integration

#: An address on loopback where nothing listens: HAProxy's connect to it fails, so the
#: relay sees "proxy connected, no greeting" -- no MX of the domain reached.
DEAD_MX = "127.0.0.66"


@pytest_twisted.ensureDeferred
async def test_sighup_with_a_shorter_retry_interval_ends_a_running_pause_at_once(rig):  # noqa: F811
    rig.dns.add_mx("dead.test", [(10, "mx.dead.test")])
    rig.dns.add_a("mx.dead.test", DEAD_MX)
    relay = await rig.start_relay(retry_interval=900)
    spool_id = await rig.send("dead-1@t", ["a@dead.test"])
    await rig.send("dead-2@t", ["b@dead.test"])
    await relay.wait_for_log(f"message {spool_id} binding default domain dead.test: "
                             "destination unreachable: queue paused for 900s",
                             timeout=DEADLINE, since=0)
    attempts = len(relay.lines_with(f"message {spool_id} binding default to dead.test"))

    rig.write_config(retry_interval=2)
    mark = relay.mark()
    relay.signal("HUP")
    await relay.wait_for_log("config reloaded", since=mark, timeout=DEADLINE)
    # Paused for 900 s by the old interval; by the new one the pause and the backoff end
    # two seconds after they began, so the retry comes now, not in a quarter of an hour.
    await relay.wait_for_log(f"message {spool_id} binding default to dead.test",
                             since=mark, timeout=DEADLINE)
    assert len(relay.lines_with(f"message {spool_id} binding default to dead.test")) > attempts
