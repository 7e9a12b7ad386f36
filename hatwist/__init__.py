"""hatwist: an outbound SMTP relay that sends mail through an HAProxy PROXY-protocol hop.

Public faces: the ``haproxy:`` client endpoint string,
:class:`hatwist.endpoint.HAProxyClientEndpoint`, the config file, ``twistd hatwist``
and the ``hatwist`` command. Everything else is internal and may change.
"""

__version__ = "0.1.0"
