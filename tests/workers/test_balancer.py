"""End-to-end: a real HAProxy balancer (``send-proxy-v2``) in front of a real relay.

Clients connect to the balancer from their own addresses on 127.0.0.0/8; the balancer
connects to the relay from 127.0.0.1 and names the client in a PROXY v2 header. The relay
must judge ``relay_from`` on the client, name it in its log and in ``Received:``, and
refuse anyone else who connects to it directly.
"""

from __future__ import annotations

import smtplib
import socket

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.service._relay import CLIENT_NAME, SMTP_TIMEOUT, make_message
from tests.workers._rig import DEADLINE, Balancer, WorkersRig

pytestmark = pytest.mark.integration

SENDER = "sender@src.test"
CLIENT = "127.0.0.77"  # allowed to relay
STRANGER = "127.0.0.78"  # reaches the relay through the balancer, but not in relay_from
BALANCER_SOURCE = "127.0.0.1"  # where HAProxy connects to the relay from


@pytest_twisted.async_yield_fixture
async def rig(reactor, dns_server, smtp_sink, haproxy, tmp_path):
    dns_server.add_mx("dest.test", [(10, "mx.dest.test")])
    dns_server.add_a("mx.dest.test", smtp_sink.host)
    setup = WorkersRig(reactor, dns_server, smtp_sink, haproxy, str(tmp_path))
    balancer = Balancer(reactor, setup.listen)
    await balancer.start()
    setup.balancer = balancer
    try:
        yield setup
    finally:
        for relay in setup.relays:
            await relay.stop()
        await balancer.close()


def submit_via(port: int, source: str, message_id: str):
    """One transaction from ``source`` to 127.0.0.1:``port``: (RCPT reply, DATA reply)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=SMTP_TIMEOUT,
                      source_address=(source, 0)) as client:
        client.ehlo()
        client.mail(SENDER)
        rcpt = client.rcpt("a@dest.test")
        if rcpt[0] != 250:
            return rcpt, None
        content = make_message(message_id).replace("\n", "\r\n").encode()
        return rcpt, client.data(content)


def first_bytes_from(port: int, source: str) -> bytes:
    """Connect straight to the relay from ``source``; what it sends before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=SMTP_TIMEOUT,
                                  source_address=(source, 0)) as s:
        chunks = []
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("workers", [1, 2])
@pytest_twisted.ensureDeferred
async def test_the_client_behind_the_balancer_is_the_peer_for_relay_from_log_and_received(
        rig, workers):
    rig.write_config(
        relay_from=f"{CLIENT}/32",
        extra=f'listen_proxy_protocol = true\nlisten_proxy_from = "{BALANCER_SOURCE}/32"\n'
              f"workers = {workers}\n",
    )
    relay = await rig.relay().start()
    if workers > 1:
        await rig.wait_status(lambda d: all(w["answered"] for w in d["workers"]))
    port = rig.balancer.port

    rcpt, data = await threads.deferToThread(submit_via, port, CLIENT, "lb-1@t")
    assert rcpt[0] == 250 and data is not None and data[0] == 250, (rcpt, data)
    await rig.sink.wait_until(lambda: "lb-1@t" in rig.delivered(), timeout=DEADLINE)
    [copy] = rig.delivered()["lb-1@t"]
    assert f"([{CLIENT}])".encode() in copy.data.split(b"\r\n\r\n")[0]
    # The relay's log lines reach this process through a pipe: wait for them.
    await relay.wait_for_log(f"from {CLIENT}: binding default", since=0, timeout=DEADLINE)
    assert not relay.lines_with("accepted", f"from {BALANCER_SOURCE}")

    # relay_from is judged on the client the header names, not on the balancer.
    rcpt, data = await threads.deferToThread(submit_via, port, STRANGER, "lb-2@t")
    assert rcpt[0] == 550 and data is None, rcpt
    await relay.wait_for_log(f"relay denied: {STRANGER}", since=0, timeout=DEADLINE)

    # A peer outside listen_proxy_from that connects to the relay itself is refused.
    got = await threads.deferToThread(first_bytes_from, rig.listen, CLIENT)
    assert got == b""
    await relay.wait_for_log(f"refused {CLIENT}:", since=0, timeout=DEADLINE)


@pytest_twisted.ensureDeferred
async def test_a_listed_peer_without_a_header_is_dropped_without_a_greeting(rig):
    rig.write_config(extra='listen_proxy_protocol = yes\nlisten_proxy_from = "127.0.0.0/8"\n')
    relay = await rig.relay().start()
    # Plain SMTP from a listed network: its EHLO is not a PROXY header.
    def speak_smtp_first() -> bytes:
        with socket.create_connection(("127.0.0.1", rig.listen), timeout=SMTP_TIMEOUT) as s:
            s.sendall(b"EHLO client\r\n")
            try:
                return s.recv(4096)
            except ConnectionResetError:
                return b""

    assert await threads.deferToThread(speak_smtp_first) == b""
    await relay.wait_for_log("invalid PROXY header", since=0, timeout=DEADLINE)
