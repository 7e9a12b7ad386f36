"""hatwist.delivery sessions through the real HAProxy hop (HAProxyClientEndpoint).

The one place where the client meets the proxy: a reused, STARTTLS-verified session that
the MX sees coming from the requested source, and the "proxy connected, no greeting" case
that HAProxy produces when the destination cannot be reached.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from hatwist.config import TLSMode
from hatwist.delivery import Envelope, NoGreeting
from hatwist.endpoint import HAProxyClientEndpoint
from tests.rig.haproxy import free_port

from .test_client_support import failure_of, open_to, tcp, within

pytestmark = pytest.mark.integration

SOURCE = "127.0.0.9"


def _through(reactor, haproxy, host: str, port: int) -> HAProxyClientEndpoint:
    return HAProxyClientEndpoint(
        reactor,
        tcp(reactor, haproxy.host, haproxy.port),
        source=(SOURCE, 0),
        destination=(host, port),
    )


@pytest_twisted.ensureDeferred
async def test_reused_verified_tls_session_through_the_proxy(reactor, haproxy, tls_smtp_sink):
    sink = tls_smtp_sink
    endpoint = _through(reactor, haproxy, sink.host, sink.port)
    session = await within(
        reactor,
        open_to(reactor, endpoint, tls=TLSMode.REQUIRED, trust_root=sink.ca.trust_root()),
    )
    assert (session.tls_active, session.tls_verified) == (True, True)
    for n in range(3):
        [result] = await within(reactor, session.send(Envelope("a@x", ["b@mx.test"]), b"%d" % n))
        assert result.kind == "delivered"
    await within(reactor, session.quit())
    [sink_session] = sink.sessions
    assert sink_session.peer[0] == SOURCE
    assert [m.tls for m in sink.messages] == [True] * 3


@pytest_twisted.ensureDeferred
async def test_unreachable_mx_behind_the_proxy_is_no_greeting(reactor, haproxy):
    endpoint = _through(reactor, haproxy, "127.0.0.20", free_port("127.0.0.20"))
    error = await failure_of(reactor, open_to(reactor, endpoint))
    assert isinstance(error, NoGreeting)
    assert error.temporary
