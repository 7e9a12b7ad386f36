# -*- test-case-name: tests.health -*-
"""
Proxy server health: the plumbed/unplumbed registry and the checks that feed it.

The registry (pure) is what delivery consults; the checker runs one
``LoopingCall`` per server and feeds it the results of a probe.
"""

from ._checker import HealthChecker
from ._errors import (
    BadBanner,
    CheckTimedOut,
    HealthError,
    NoBanner,
    ProbeError,
    UnknownServerError,
)
from ._interfaces import IHealthProbe, SourceResults
from ._probes import ConnectProbe, SMTPBannerProbe, make_probe
from ._registry import (
    LATENCY_BUCKETS,
    STATE_CHANGE_EVENT,
    ServerRegistry,
    ServerState,
    ServerStatus,
    StateChange,
)

__all__ = [
    "LATENCY_BUCKETS",
    "STATE_CHANGE_EVENT",
    "BadBanner",
    "CheckTimedOut",
    "ConnectProbe",
    "HealthChecker",
    "HealthError",
    "IHealthProbe",
    "NoBanner",
    "ProbeError",
    "SMTPBannerProbe",
    "ServerRegistry",
    "ServerState",
    "ServerStatus",
    "SourceResults",
    "StateChange",
    "UnknownServerError",
    "make_probe",
]
