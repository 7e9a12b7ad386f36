"""The ``redis_url`` service key: its values, its errors, and that no face shows a password."""

from __future__ import annotations

import json

import pytest

from hatwist.cli import main
from hatwist.config import ConfigError, parse_config
from hatwist.config import converters as c
from hatwist.config.values import RedisURL


@pytest.mark.parametrize(
    "text",
    ["redis://127.0.0.1:6379/0", "rediss://redis.example:6380", "redis://[::1]/2",
     "unix:///run/redis/redis.sock", "redis://:pw@10.0.0.5/1"],
)  # fmt: skip
def test_redis_urls(text):
    assert c.redis_url(f"  {text} ") == RedisURL(text)


@pytest.mark.parametrize(
    ("text", "words"),
    [("http://127.0.0.1:6379", "expected redis://"), ("redis://", "needs a host"),
     ("redis://h:0", "1-65535"), ("redis://h:70000", "not a Redis URL"),
     ("redis://h/zero", "must be a number"), ("unix://", "socket path")],
)  # fmt: skip
def test_not_redis_urls(text, words):
    with pytest.raises(ValueError, match=words):
        c.redis_url(text)


def test_without_the_key_limits_stay_per_process():
    assert parse_config("", "t.conf").service.redis_url is None
    assert c.redis_url("") is None


def test_a_bad_url_is_refused_at_its_line_without_the_password():
    with pytest.raises(ConfigError) as caught:
        parse_config("\nredis_url = http://:s3cret@h:1\n", "t.conf")
    text = str(caught.value)
    assert "t.conf:2" in text and "redis_url" in text and "s3cret" not in text


def test_check_config_never_shows_the_password(tmp_path, capsys):
    path = tmp_path / "hatwist.conf"
    path.write_text("redis_url = redis://:s3cret@10.0.0.5:6379/0\n")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "redis://:***@10.0.0.5:6379/0" in out and "s3cret" not in out
    assert main(["check-config", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["service"]["redis_url"] == "redis://:***@10.0.0.5:6379/0"
    # the value itself still connects with the password
    url = parse_config(path.read_text(), "t").service.redis_url.url
    assert url == "redis://:s3cret@10.0.0.5:6379/0"
