"""The service tests' shared ``rig`` fixture (defined with its Rig in test_relay.py): the
real HAProxy, DNS and sink around one relay, its config file and spool."""

from tests.service.test_relay import rig  # noqa: F401
