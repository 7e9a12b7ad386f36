"""twistd's face of hatwist (hatwist.tap): options, the service tree, config reload."""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.application.service import IServiceMaker
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.plugin import getPlugins
from twisted.python import usage

from hatwist.tap import Options, RelayService, StartupError

CONFIG = """\
listen = 127.0.0.1:0
status_listen = 127.0.0.1:0
spool_dir = {spool}
resolver = 127.0.0.1:53535
ha_proxy_server = 127.0.0.1:1
ha_proxy_src_addr = 127.0.0.9
ha_proxy_client {{
  health_check_interval = 60
}}
"""


def write_config(tmp_path, text=CONFIG):
    path = tmp_path / "hatwist.conf"
    path.write_text(text.format(spool=tmp_path / "spool"), encoding="utf-8")
    return path


def test_twistd_finds_the_hatwist_service_maker():
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert makers["hatwist"].options is Options


def test_options_load_and_validate_the_config(tmp_path):
    path = write_config(tmp_path)
    options = Options()
    options.parseOptions(["--config", str(path)])
    assert options["loaded"].filename == str(path)


def test_an_invalid_config_exits_2_with_one_line_naming_file_and_line(tmp_path, capsys):
    path = write_config(tmp_path, CONFIG + "colour = blue\n")
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(["--config", str(path)])
    assert exited.value.code == 2  # as hatwist check-config
    err = capsys.readouterr().err
    assert re.fullmatch(rf"{re.escape(str(path))}:10:1: .*colour.*\n", err)


def test_a_missing_config_file_exits_2_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(["--config", str(tmp_path / "nope.conf")])
    assert exited.value.code == 2
    assert "nope.conf" in capsys.readouterr().err


def test_an_unknown_option_is_still_a_usage_error():
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--colour", "blue"])


def relay_for(tmp_path, reactor, text=CONFIG):
    """The service tree twistd would build from a config file of ``text`` (not started)."""
    options = Options()
    options.parseOptions(["--config", str(write_config(tmp_path, text))])
    return RelayService(options["loaded"], reactor=reactor, hostname="relay.test")


@pytest.fixture
def relay(tmp_path, reactor):
    service = relay_for(tmp_path, reactor)
    yield service
    if service.running:
        pytest_twisted.blockon(defer.maybeDeferred(service.stopService))


@pytest_twisted.ensureDeferred
async def test_relay_listens_for_mail_and_status_then_stops(relay, reactor):
    relay.startService()
    port = await relay.listener.listening.addTimeout(5, reactor)
    status_port = await relay.status_listener.listening.addTimeout(5, reactor)
    assert port.getHost().host == "127.0.0.1" and port.getHost().port > 0
    assert status_port.getHost().port > 0
    await defer.maybeDeferred(relay.stopService).addTimeout(10, reactor)
    assert not relay.running


def test_a_taken_listen_address_fails_the_start_naming_it(tmp_path, reactor):
    squatter = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        port = squatter.getHost().port
        text = CONFIG.replace("listen = 127.0.0.1:0", f"listen = 127.0.0.1:{port}", 1)
        relay = relay_for(tmp_path, reactor, text)
        with pytest.raises(StartupError, match=rf"^listen 127\.0\.0\.1:{port}: "
                                               "address already in use$"):
            relay.privilegedStartService()
        status_port = relay.status_listener.port
        assert status_port.disconnecting or not status_port.connected  # released, not leaked
    finally:
        squatter.stopListening()


@pytest_twisted.ensureDeferred
async def test_reload_compares_listen_with_what_is_bound_not_with_the_last_file(
    relay, tmp_path, reactor
):
    path = tmp_path / "hatwist.conf"
    path.write_text(path.read_text().replace("listen = 127.0.0.1:0", "listen = 127.0.0.1:2601", 1))
    warned = []
    observer = warned.append
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(observer)
    try:
        assert await relay.reload().addTimeout(5, reactor) is True
        assert await relay.reload().addTimeout(5, reactor) is True  # same file again
    finally:
        globalLogPublisher.removeObserver(observer)
    listen_warnings = [e for e in warned if e.get("key") == "listen"]
    # Both reloads still differ from the listener that runs: both say so.
    assert len(listen_warnings) == 2
    assert all(e["new"] == "127.0.0.1:2601" and e["running"] == "127.0.0.1:0"
               for e in listen_warnings)


@pytest_twisted.ensureDeferred
async def test_reload_applies_a_valid_config(relay, tmp_path, reactor):
    path = tmp_path / "hatwist.conf"
    path.write_text(
        path.read_text() + "binding blue {\n  ha_proxy_src_addr = 127.0.0.10\n}\n"
    )
    assert not relay._binding_exists("blue")
    applied = await relay.reload().addTimeout(5, reactor)
    assert applied is True
    assert relay._binding_exists("blue")
    assert relay.agent.config is relay.config


def test_service_limits_come_from_the_config(tmp_path, reactor):
    text = CONFIG + "max_inbound_connections = 3\nmax_deliveries_in_flight = 7\n"
    relay = relay_for(tmp_path, reactor, text)
    assert relay.inbound.max_sessions == 3
    assert relay.scheduler._max_in_flight == 7


@pytest_twisted.ensureDeferred
async def test_reload_keeps_the_running_config_when_the_new_one_is_invalid(
    relay, tmp_path, reactor
):
    before = relay.config
    (tmp_path / "hatwist.conf").write_text("binding {\n")
    applied = await relay.reload().addTimeout(5, reactor)
    assert applied is False
    assert relay.config is before


@pytest_twisted.ensureDeferred
async def test_the_smtp_listener_keeps_a_backlog_of_1024_not_twisteds_50(reactor):
    """``ss -ltn`` shows a listening socket's backlog as its Send-Q."""
    import shutil

    from twisted.internet import utils

    from hatwist.config import ServerAddress
    from hatwist.tap import LISTEN_BACKLOG, server_endpoint

    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    port = await server_endpoint(reactor, ServerAddress("127.0.0.1", 0), LISTEN_BACKLOG).listen(
        Factory.forProtocol(Protocol))
    try:
        number = port.getHost().port
        out = await utils.getProcessOutput(shutil.which("ss"),
                                           ["-ltnH", f"sport = :{number}"])
        assert out.split()[2] == b"1024", out  # State Recv-Q Send-Q ...
    finally:
        await port.stopListening()
