# -*- test-case-name: tests.test_inbound_tls -*-
"""
What the listener's security settings name on disk, loaded together: the STARTTLS
certificate and key, and the AUTH users file.

Blocking (it reads files): the service calls L{load_credentials} once at start and, on
SIGHUP, in a thread.  One error type for all of it, so a reload is applied whole or
not at all: a bad users file or a certificate that does not match its key keeps the
running ones.  Each load of the users file also makes the stand-in hash that names not
in it are checked against (L{hatwist.inbound._auth.Users.dummy}), so it follows the
file's hashes from one reload to the next.
"""

from __future__ import annotations

import attrs

from hatwist.config.values import ServiceSettings

from ._auth import Users, UsersFileError, load_users
from ._tls import ListenerTLSError, ServerTLS, load_server_tls


class CredentialsError(Exception):
    """The certificate, key or users file cannot be used; the text says which and why."""


@attrs.frozen
class Credentials:
    """The loaded TLS context (None: no STARTTLS) and users (None: no AUTH)."""

    tls: ServerTLS | None = None
    users: Users | None = None


def load_credentials(service: ServiceSettings) -> Credentials:
    """Load what ``service`` names; raise L{CredentialsError} for the first problem."""
    tls = users = None
    try:
        if service.listen_tls_cert is not None and service.listen_tls_key is not None:
            tls = load_server_tls(service.listen_tls_cert, service.listen_tls_key)
        if service.auth_users_file is not None:
            users = load_users(service.auth_users_file)
    except (ListenerTLSError, UsersFileError) as e:
        raise CredentialsError(str(e)) from None
    return Credentials(tls, users)
