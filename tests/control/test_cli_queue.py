"""Tests for hatwist._cli_queue: arguments to requests, answers to text, exit statuses."""

from __future__ import annotations

import io
import os

import pytest
import pytest_twisted
from twisted.internet import defer

from hatwist import cli
from hatwist._cli_queue import list_text, request_of
from hatwist.control import Request
from tests.control.test_server import DEADLINE
from tests.rig.wait import until
from tests.service._relay import ROOT

ID = "0005f1c2a3b4c5-0a1b2c3d4e"


def parsed(*argv):
    return cli.build_parser().parse_args(["queue", *argv])


def test_arguments_become_the_request_the_relay_checks():
    assert request_of(parsed("list", "--domain", "Gmail.Test", "--limit", "5")) == Request(
        "list", domain="gmail.test", limit=5)
    assert request_of(parsed("hold", ID, ID)) == Request("hold", (ID,))
    assert request_of(parsed("show", ID)).ids == (ID,)
    assert request_of(parsed("flush", "--binding", "b1")) == Request("flush", binding="b1")


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    args = parsed(*argv)
    return args.run(args, out, err), out.getvalue(), err.getvalue()


def test_a_command_that_cannot_be_sent_exits_2_before_connecting(tmp_path):
    status, _, err = run("delete", "--socket", str(tmp_path / "none.sock"))
    assert (status, err) == (2, "hatwist queue: delete needs message ids or a filter "
                                "(--binding, --domain, --state)\n")


def test_no_relay_listening_is_one_exact_line_and_exit_1(tmp_path):
    config = tmp_path / "hatwist.conf"
    config.write_text(f'spool_dir = "{tmp_path}"\n')
    status, out, err = run("list", "--config", str(config))
    assert (status, out) == (1, "")
    assert err == (f"hatwist queue: no relay is listening on {tmp_path}/control.sock "
                   "(is it running with this config?)\n")


def test_a_socket_that_refuses_is_not_running_either(tmp_path):
    import socket

    path = str(tmp_path / "c.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    status, _, err = run("show", ID, "--socket", path)
    assert status == 1 and "no relay is listening on" in err
    assert os.path.exists(path), "the client removes nothing"


def test_a_bad_config_exits_2(tmp_path):
    config = tmp_path / "hatwist.conf"
    config.write_text("retry_intervall = 3\n")
    status, _, err = run("list", "--config", str(config))
    assert status == 2 and "retry_intervall" in err


@pytest.mark.parametrize(("total", "tail"), [(2, "2 message(s)"),
                                             (9, "9 message(s) match; the first 2 shown")])
def test_list_prints_a_table_and_the_count(total, tail):
    row = {"id": ID, "state": "backoff", "binding": "b1", "domains": ["x.test"], "pending": 1,
           "recipients": 2, "attempts": 3, "next_attempt_at": 1060.0, "size": 10,
           "from": "a@src.test"}
    lines = list_text([row, row], {"total": total, "shown": 2}, now=1000.0)
    assert lines[0].split() == ["ID", "STATE", "BINDING", "DOMAINS", "RCPTS", "TRIES",
                                "NEXT", "TRY", "SIZE", "FROM"]
    assert lines[1].split() == [ID, "backoff", "b1", "x.test", "1/2", "3", "in", "1m00s",
                                "10", "<a@src.test>"]
    assert lines[-1].startswith(tail)


# -- a real hatwist queue process on a long answer from the real control server ---------


async def _cli(reactor, path, *argv):
    """``hatwist queue ARGV --socket PATH`` as its own process, stdout and stderr piped."""
    import sys

    from twisted.internet import protocol

    class Catch(protocol.ProcessProtocol):
        def __init__(self):
            self.out, self.err, self.first = b"", b"", defer.Deferred()
            self.ended = defer.Deferred()

        def outReceived(self, data):
            self.out += data
            if b"\n" in self.out and not self.first.called:
                self.first.callback(None)

        def errReceived(self, data):
            self.err += data

        def processEnded(self, reason):
            self.ended.callback(reason.value.exitCode)

    catch = Catch()
    transport = reactor.spawnProcess(
        catch, sys.executable, [sys.executable, "-m", "hatwist.cli", "queue", *argv,
                                "--socket", path], env=dict(os.environ), path=str(ROOT))
    return catch, transport


@pytest_twisted.ensureDeferred
async def test_a_reader_that_closes_the_pipe_ends_the_cli_quietly_and_the_action(
        paced, reactor):
    catch, transport = await _cli(reactor, paced.path, "hold", "--binding", "b1")
    await catch.first.addTimeout(DEADLINE, reactor)
    transport.closeStdout()  # `hatwist queue hold ... | head -1`
    status = await catch.ended.addTimeout(DEADLINE, reactor)
    assert (status, catch.err) == (1, b"")  # no BrokenPipeError traceback
    await until(reactor, lambda: paced.handler.stopped, "the handler was told to stop")
    assert paced.handler.done < paced.handler.batches


@pytest_twisted.ensureDeferred
async def test_ctrl_c_says_the_action_stops_and_exits_130(paced, reactor):
    import signal

    paced.handler.slow = True  # a batch every 10 ms: the CLI is still reading at the SIGINT
    catch, transport = await _cli(reactor, paced.path, "delete", "--binding", "b1")
    await catch.first.addTimeout(DEADLINE, reactor)
    transport.signalProcess(signal.SIGINT)
    status = await catch.ended.addTimeout(DEADLINE, reactor)
    assert status == 130
    assert catch.err.decode() == ("hatwist queue: interrupted: the relay stops the action "
                                  "between two batches; what it did is logged\n")
    await until(reactor, lambda: paced.handler.stopped, "the handler was told to stop")
