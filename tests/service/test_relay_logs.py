"""The buffered log of a real relay process (hatwist._logging under twistd and twist).

Lines are written once per reactor turn while the reactor runs, and straight through
before and after: a relay that delivered a burst of mail and was stopped with SIGTERM
has logged every acceptance and every attempt once, and Twisted's own lines of the
shutdown that come after the reactor stopped ("Main loop terminated.", twistd's "Server
Shut Down."), in both the text and the JSON format.
"""

from __future__ import annotations

import json
import re

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.service._relay import make_message
from tests.service.test_relay import DEADLINE, rig  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

BURST = 20


@pytest.mark.parametrize("json_logs", [False, True], ids=["twistd-text", "twist-json"])
@pytest_twisted.ensureDeferred
async def test_every_line_of_a_burst_and_of_the_shutdown_reaches_the_log(rig, json_logs):  # noqa: F811
    rig.write_config()
    relay = await rig.relay(json_logs=json_logs).start()
    sent = await defer.gatherResults([
        rig.submit(["a@dest.test"], make_message(f"burst-{n}@t")) for n in range(BURST)])
    ids = [re.search(r"queued as (\S+)", s.data[1]).group(1) for s in sent]
    await rig.sink.wait_for(BURST, timeout=DEADLINE)
    await relay.wait_for_log(ids[-1], since=0, timeout=DEADLINE)  # its accepted line
    await relay.stop()

    if json_logs:
        events = [json.loads(line.lstrip("\x1e")) for line in relay.logs if line.strip()]
        accepted = [e["id"] for e in events if str(e.get("log_format", "")).startswith(
            "accepted {id}")]
        attempts = [e["message_id"] for e in events
                    if e.get("hatwist_event") == "delivery_attempt"]
        texts = [e.get("log_format", "") for e in events]
    else:
        accepted = [m.group(1) for line in relay.logs
                    if (m := re.search(r"\baccepted (\S+) from ", line))]
        attempts = [m.group(1) for line in relay.logs
                    if (m := re.search(r"\bmessage (\S+) binding \S+ domain \S+: ", line))]
        texts = relay.logs
    assert sorted(accepted) == sorted(ids)
    assert sorted(attempts) == sorted(ids)
    assert any("Main loop terminated." in t for t in texts[-5:])
    if not json_logs:
        assert "Server Shut Down." in texts[-1]
