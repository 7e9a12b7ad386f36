# -*- test-case-name: tests.control -*-
"""
The relay's control socket: how ``hatwist queue`` reaches the running relay.

``_protocol`` (pure) checks a request line and writes answer lines;
``_handler`` maps a request onto the scheduler's queue operations;
``_server`` is the Twisted side: the UNIX socket (mode 0600), its bounds, and
the peer's uid for the log.
"""

from ._handler import QueueHandler
from ._protocol import COMMANDS, STATES, Request, RequestError, parse_request
from ._server import ControlError, ControlService

__all__ = [
    "COMMANDS",
    "STATES",
    "ControlError",
    "ControlService",
    "QueueHandler",
    "Request",
    "RequestError",
    "parse_request",
]
