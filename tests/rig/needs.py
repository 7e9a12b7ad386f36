"""Skip-or-fail decisions for tests that need a real part (tests: tests.rig.test_rig).

A missing part is a skip on a developer's machine but a failure in CI (``CI`` set): CI
must prove the real thing, IPv6 inside network namespaces included. Where the kernel or
container forbids namespaces on a developer's machine, the IPv6 tests skip with the reason.
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
    """Skip where namespaces are not permitted, naming the reason; in CI, fail."""
    reason = netns_unavailable_reason()
    if reason is None:
        return
    message = f"network namespaces not permitted here: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " and CI is set: the IPv6 proof must run here")
    pytest.skip(message)
