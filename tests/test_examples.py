"""The shipped sample config (examples/hatwist.conf) is valid and says what it shows.

``hatwist check-config`` runs on it as a user would (a child process), and the config it
loads has the bindings, proxies and the bypassed domain its comments describe. Every
address in it is from a documentation range (RFC 5737, RFC 3849), never a real host.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path

from hatwist.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hatwist.conf"
DOCUMENTATION = [ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32",
    "127.0.0.0/8", "::1/128",
)]


def test_check_config_accepts_the_example():
    done = subprocess.run([sys.executable, "-m", "hatwist.cli", "check-config", str(EXAMPLE)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{EXAMPLE}: valid")
    assert "warning" not in done.stderr


def test_the_example_means_what_its_comments_say():
    config = load_config(str(EXAMPLE))
    assert sorted(config.bindings) == ["default", "pool_a", "pool_b", "warmup"]
    assert config.group("pool").members == ("pool_a", "pool_b")
    assert config.binding("pool_a").base_settings.binding_weight == 3
    assert [str(s) for s in config.proxy_servers] == ["192.0.2.1:8085", "192.0.2.2:8085"]
    warmup = config.binding("warmup").settings_for("gmail.com")
    assert str(warmup.outbound_throttle_messages) == "50/3600"
    assert config.binding("default").settings_for("example.org").bypass is True
    assert config.binding("default").settings_for("example.com").bypass is False


def test_every_address_in_the_example_is_for_documentation():
    text = EXAMPLE.read_text()
    candidates = re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", text)
    candidates += re.findall(r"(?<![\w:])[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}", text)
    addresses = []
    for candidate in candidates:
        try:
            addresses.append(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    assert len(addresses) >= 8
    for address in addresses:
        assert any(address in network for network in DOCUMENTATION), address
