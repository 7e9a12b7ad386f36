"""Tests for hatwist.control._protocol: what a request line may say, and the refusals."""

from __future__ import annotations

import json

import pytest

from hatwist.control import Request, RequestError, parse_request
from hatwist.control._protocol import MAX_IDS, MAX_LIMIT, encode

ID = "0005f1c2a3b4c5-0a1b2c3d4e"


def line(**body):
    return json.dumps(body).encode()


def test_a_list_request_with_filters():
    request = parse_request(line(command="list", binding="blue", domain="Gmail.Test.",
                                 state="backoff", limit=5))
    assert request == Request("list", (), "blue", "gmail.test", "backoff", 5)


def test_ids_are_checked_and_kept_once_in_order():
    other = "0005f1c2a3b4c6-0a1b2c3d4e"
    assert parse_request(line(command="hold", ids=[other, ID, other])).ids == (other, ID)
    with pytest.raises(RequestError, match="is not a message id"):
        parse_request(line(command="hold", ids=["../../etc/passwd"]))
    with pytest.raises(RequestError, match=f"at most {MAX_IDS}"):
        parse_request(line(command="delete", ids=[ID] * (MAX_IDS + 1)))


@pytest.mark.parametrize(("body", "error"), [
    (b"not json", "not a JSON object"),
    (b"[1, 2]", "not a JSON object"),
    (line(command="rm"), "unknown command 'rm'"),
    (line(command="list", extra=1), "unknown field"),
    (line(command="list", state="sleepy"), "unknown state 'sleepy'"),
    (line(command="list", limit=0), "limit must be"),
    (line(command="list", limit=MAX_LIMIT + 1), "limit must be"),
    (line(command="list", limit=True), "limit must be"),
    (line(command="list", binding="x" * 256), "binding must be"),
    (line(command="list", ids=[ID]), "takes filters, not message ids"),
    (line(command="show"), "exactly one message id"),
    (line(command="show", ids=[ID], domain="a.test"), "exactly one message id"),
    (line(command="flush", state="held"), "not --state"),
    (line(command="delete"), "needs message ids or a filter"),
    (line(command="bounce", ids=[ID], binding="b"), "not both"),
])
def test_refusals_say_what_is_wrong(body, error):
    with pytest.raises(RequestError, match=error):
        parse_request(body)


def test_answer_lines_are_one_json_object_each():
    assert encode({"ok": True, "total": 3}) == b'{"ok":true,"total":3}\n'
    assert Request("list", limit=7).to_json() == {"command": "list", "limit": 7}
    assert parse_request(json.dumps(Request("hold", (ID,)).to_json()).encode()).ids == (ID,)
