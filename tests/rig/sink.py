"""The rig's SMTP sink is :mod:`hatwist.lab.sink`, shipped for ``hatwist demo``
(tests: tests.rig.test_rig). Kept so ``tests.rig.sink`` imports keep working."""

from hatwist.lab.sink import (
    DEFAULT_NAME,
    END_OF_DATA,
    SILENT,
    SinkMessage,
    SinkSession,
    SMTPSink,
)

__all__ = ["DEFAULT_NAME", "END_OF_DATA", "SILENT", "SMTPSink", "SinkMessage", "SinkSession"]
