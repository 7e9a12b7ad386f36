"""The smtp health check proves each family against its own target, through the real
HAProxy inside a network namespace (runs tests/health/netns_health.py there).

Only a namespace gives a test IPv6 addresses of its own (``fd00::9`` the IPv6 source,
``fd00::20`` the target's IPv6 side), and only ``ip netns exec`` gives a process a hosts
file of its own (``/etc/netns/NS/hosts``): the real ``getaddrinfo`` then knows the
target's name by its IPv4 address alone, which is the case issue 12 reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import pytest
import pytest_twisted

from tests.rig.haproxy import HAProxy
from tests.rig.needs import require_haproxy, require_netns
from tests.rig.netns import NetNS

pytestmark = pytest.mark.integration

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT_DEADLINE = 40.0
ADDRESSES = ("fd00::9/128", "fd00::20/128")
#: A name only the namespace's own hosts file knows, by an IPv4 address only.
TARGET_NAME = "sink.health.test"


async def check_in_namespace(reactor, *target_args: str, hosts: str | None = None) -> dict:
    """Run the script with HAProxy in a fresh namespace; what it printed."""
    require_haproxy()
    require_netns()
    namespace = await NetNS.create(reactor, addresses=ADDRESSES)
    etc = f"/etc/netns/{namespace.name}"
    had_netns_dir = os.path.isdir("/etc/netns")
    try:
        if hosts is not None:
            os.makedirs(etc)
            with open(f"{etc}/hosts", "w") as f:
                f.write(hosts)
        relay = HAProxy(reactor, host="127.0.0.1", netns=namespace.name)
        try:
            await relay.start()
            result = await namespace.run(
                "python3",
                "-m",
                "tests.health.netns_health",
                "--proxy",
                relay.server_text,
                *target_args,
                timeout=SCRIPT_DEADLINE,
                cwd=PROJECT_ROOT,
            )
        finally:
            await relay.close()
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        if not had_netns_dir:
            with contextlib.suppress(OSError):  # only if empty: another test may use it
                os.rmdir("/etc/netns")
        await namespace.delete()
    assert result.code == 0, result.err.decode(errors="replace")
    return json.loads(result.out)


@pytest_twisted.ensureDeferred
async def test_each_family_is_proved_against_its_own_target():
    from twisted.internet import reactor

    seen = await check_in_namespace(
        reactor, "--target", "127.0.0.20:{port}", "--ipv6-target", "[fd00::20]:{port}"
    )
    assert seen["server"] == "plumbed"
    assert {s: p["state"] for s, p in seen["paths"].items()} == {
        "127.0.0.9": "plumbed",
        "fd00::9": "plumbed",
    }
    # Each source reached the target of its own family through HAProxy, from itself.
    assert seen["peers"] == ["127.0.0.9", "fd00::9"]
    assert seen["sink_sessions"] == {"fd00::20": 2, "127.0.0.20": 2}


@pytest_twisted.ensureDeferred
async def test_a_target_name_without_aaaa_does_not_unplumb_the_ipv6_path():
    from twisted.internet import reactor

    seen = await check_in_namespace(
        reactor,
        "--target",
        f"{TARGET_NAME}:{{port}}",
        hosts=f"127.0.0.1 localhost\n127.0.0.20 {TARGET_NAME}\n",
    )
    assert seen["server"] == "plumbed"
    paths = seen["paths"]
    assert paths["127.0.0.9"] == {"state": "plumbed", "failures": 0, "error": None}
    assert paths["fd00::9"] == {"state": "plumbed", "failures": 0, "error": None}
    # Only the IPv4 source was proved by a banner; the IPv6 one by a connect.
    assert seen["peers"] == ["127.0.0.9"]
