# -*- test-case-name: tests.test_mx -*-
"""Where mail for a domain goes: MX hosts and their addresses.

RFC 5321 section 5.1 and RFC 7505, done with ``twisted.names`` and nothing else:

- MX records sorted by preference, equal preferences shuffled so that load spreads the way
  the receiving domain intended;
- no MX record at all means the domain itself at preference 0 (the implicit MX);
- ``MX 0 .`` (null MX) means the domain accepts no mail: fail at once, 556 5.1.10;
- NXDOMAIN is permanent, and so is a domain DNS cannot carry (a label over 63 octets
  once IDNA-encoded: 553 5.1.3 with the reason); timeouts, SERVFAIL and anything else
  odd are temporary, because a broken resolver must never bounce mail;
- every host's A and AAAA records are asked for explicitly (``getHostByName`` sends ANY,
  which many servers answer badly or not at all);
- a host whose names lead to no address is skipped, and so is (logged) an MX name that
  cannot be encoded for DNS; no address at all is temporary;
- answers are reused within their TTL (capped at an hour), so a stream of messages to one
  domain costs DNS queries once per TTL, not three or more per attempt.

:class:`MXResolver` is the only stateful object here; it holds an ``IResolver`` built by
:func:`build_resolver` from the configured ``resolver`` (or the system's). The package
keeps the errors (``_errors``), the answer cache (``_cache``, pure) and the lookups
(``_resolver``) apart; everything public is imported from here.
"""

from hatwist.mx._cache import DEFAULT_CACHE_SIZE, MAX_CACHE_SECONDS
from hatwist.mx._errors import (
    MXError,
    NoMXAddresses,
    NoSuchDomain,
    NullMX,
    TemporaryDNSError,
    UnencodableDomain,
)
from hatwist.mx._resolver import (
    DEADLINE_SLACK,
    DEFAULT_TIMEOUT,
    MAX_CNAME_HOPS,
    MAX_MX_HOSTS,
    MX_SKIPPED_EVENT,
    SYSTEM_RESOLV_CONF,
    MXHost,
    MXResolver,
    build_resolver,
)

__all__ = [
    "DEADLINE_SLACK",
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_TIMEOUT",
    "MAX_CACHE_SECONDS",
    "MAX_CNAME_HOPS",
    "MAX_MX_HOSTS",
    "MX_SKIPPED_EVENT",
    "SYSTEM_RESOLV_CONF",
    "MXError",
    "MXHost",
    "MXResolver",
    "NoMXAddresses",
    "NoSuchDomain",
    "NullMX",
    "TemporaryDNSError",
    "UnencodableDomain",
    "build_resolver",
]
