"""The rig's certificates are :mod:`hatwist.lab.certs`, shipped with the lab's sink
(tests: tests.rig.test_rig). Kept so ``tests.rig.certs`` imports keep working."""

from hatwist.lab.certs import CA, ServerCert, make_ca, shared_ca

__all__ = ["CA", "ServerCert", "make_ca", "shared_ca"]
