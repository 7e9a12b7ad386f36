"""Whatever the text, parse_config either returns a Config or raises ConfigError."""

from __future__ import annotations

import pathlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatwist.config import Config, ConfigError, parse_config

VALID = """\
listen = 127.0.0.1:2525
relay_from = "10.0.0.0/8, ::1"
ha_proxy_server = "10.0.0.1:8085 [2001:db8::1]:8085 proxy.example:5000"
ha_proxy_client {
  health_check_interval = 5
  health_check_mode = smtp
  health_check_target = 127.0.0.1:25
}
domain example.net { tls = no }
binding_group g {
  ha_proxy_src_addr = 192.0.2.1
  binding b {
    ha_proxy_ipv6_src_addr = "2001:db8::9"
    Domain example.com {
      ha_proxy_bypass = "true"
    }
  }
}
"""

SEED = (pathlib.Path(__file__).parent / "data" / "seed-fixed.conf").read_text()

# Pieces that make mutations likely to hit interesting paths rather than plain typos.
_FRAGMENTS = ["{", "}", "=", '"', "\\", "#", "\n", " ", ",", ":", "[", "]", "binding",
              "domain", "ha_proxy_client", "binding_group", "ha_proxy_server", "0", "::",
              "health_check_timeout = 9", "tls = no", "x { }", "\r", "\x00", "é"]  # fmt: skip


def check(text: str) -> None:
    try:
        result = parse_config(text, "fuzz.conf")
    except ConfigError as e:
        assert e.filename == "fuzz.conf"
        assert str(e).startswith("fuzz.conf")
    else:
        assert isinstance(result, Config)


def test_the_fuzz_bases_are_valid():
    parse_config(VALID)
    parse_config(SEED)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_random_text(text):
    check(text)


@settings(max_examples=300)
@given(st.lists(st.sampled_from([*_FRAGMENTS, "a", "b1", "10.0.0.1:25"]), max_size=60))
def test_random_token_soup(parts):
    check(" ".join(parts))


@settings(max_examples=500)
@given(
    base=st.sampled_from([VALID, SEED]),
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10_000),
            st.integers(min_value=0, max_value=8),
            st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=5)),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_valid_configs(base, edits):
    text = base
    for where, cut, insert in edits:
        where %= len(text) + 1
        text = text[:where] + insert + text[where + cut :]
    check(text)
