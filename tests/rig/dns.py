"""The rig's DNS server is :mod:`hatwist.lab.dns`, shipped for ``hatwist demo``
(tests: tests.rig.test_rig). Kept so ``tests.rig.dns`` imports keep working."""

from hatwist.lab.dns import DEFAULT_TTL, DNSQuery, DNSServer

__all__ = ["DEFAULT_TTL", "DNSQuery", "DNSServer"]
