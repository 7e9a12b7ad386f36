"""Skip-or-fail decisions for tests that need a real part (tests: tests.rig.test_rig).

A missing part is a skip on a developer's machine but a failure in CI (``CI`` set): CI
must prove the real thing. Network namespaces are the one exception: where the kernel or
container forbids them, the IPv6 end-to-end tests skip with the reason.
"""

from __future__ import annotations

import os

import pytest

from tests.rig.haproxy import HAPROXY_BINARY, haproxy_available
from tests.rig.netns import netns_unavailable_reason


def require_haproxy() -> None:
    """Skip when HAProxy is not installed, except in CI (``CI`` set), where it fails."""
    if haproxy_available():
        return
    message = f"{HAPROXY_BINARY} is not installed (Debian package haproxy)"
    if os.environ.get("CI"):
        pytest.fail(message + " and CI is set: the rig must run here")
    pytest.skip(message)


def require_netns() -> None:
    """Skip when network namespaces are not permitted here, naming the reason."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces not permitted here: {reason}")
