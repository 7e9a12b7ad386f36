"""
The hold state in the spool (hatwist.spool._values): ``held_at`` and ``held_for`` are
written down and read back by the real SQLite spool, so a hold outlives a restart, and a
message never held is written exactly as before.
"""

from __future__ import annotations

import json

import attrs
import pytest
import pytest_twisted

from hatwist.spool._errors import CorruptEntry
from hatwist.spool._values import decode, encode
from tests.test_spool_helpers import CONTENT, deadline, pool, spools  # noqa: F401 (fixtures)


@pytest_twisted.ensureDeferred
async def test_a_hold_is_read_back_after_the_spool_is_opened_again(tmp_path, spools):  # noqa: F811
    spool = spools(tmp_path)
    message = await deadline(spool.store("b1", "a@example.com", ["x@example.net"], CONTENT))
    held = attrs.evolve(message, held_at=1234.5, held_for=60.0)
    await deadline(spool.update(held))
    await deadline(spool.close())

    again = spools(tmp_path)
    [recovered] = await deadline(again.recover())
    assert (recovered.held_at, recovered.held_for) == (1234.5, 60.0)


def test_a_message_never_held_is_encoded_as_before_and_bad_hold_fields_are_refused():
    from hatwist.spool._values import SpooledMessage, new_recipients

    message = SpooledMessage(id="0005f1c2a3b4c5-0a1b2c3d4e", binding="b1", mail_from="",
                             recipients=new_recipients(["x@example.net"]), received_at=1.0,
                             attempts=0, next_attempt_at=1.0, size=3)
    body = json.loads(encode(message))
    assert "held_at" not in body and "held_for" not in body
    assert decode(encode(message)) == message
    released = attrs.evolve(message, held_for=5.5)
    assert decode(encode(released)) == released
    for field, value in (("held_at", "noon"), ("held_for", None), ("held_for", True)):
        bad = dict(json.loads(encode(message)), **{field: value})
        with pytest.raises(CorruptEntry):
            decode(json.dumps(bad).encode())
