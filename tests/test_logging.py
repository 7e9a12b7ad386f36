"""hatwist._logging: the log lines of 10 ms in one write, Twisted's text exactly."""

from __future__ import annotations

import io
import threading

import pytest
from twisted.application.twist._options import TwistOptions
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    Logger,
    LogLevel,
    LogPublisher,
    eventFromJSON,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions

from hatwist._logging import (
    FLUSH_INTERVAL,
    TIME_FORMAT,
    BufferedFileLogObserver,
    ClassicTextFormatter,
    buffered_json_observer,
    buffered_text_observer,
    json_record,
    twistd_stdout_observer,
)

from .test_tap import write_config

NOW = 1_764_620_154.25


class Thing:
    colour = "blue"

    def __repr__(self) -> str:
        return "<Thing>"


def _failure() -> Failure:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        return Failure()


EVENTS = [
    dict(log_format="accepted {id} from {peer}: {size} bytes", id="A1", peer="1.2.3.4",
         size=5120),
    dict(log_format="{x!r} {y!s:>6} {z:.2f} {{literal}}", x="q", y=7, z=1.5),
    dict(log_format="a\nb {v}", v="c\nd"),
    dict(log_format="attribute {t.colour} and index {l[1]}", t=Thing(), l=[1, 2]),
    dict(log_format="call {f()}", f=lambda: "called"),
    dict(log_format="missing {nope}"),
    dict(log_format="positional {}"),
    dict(log_format="broken {", v=1),
    dict(log_format="bad spec {v:zz}", v=3),
    dict(log_format=b"bytes {v}", v=1),
    dict(log_format=""),
    dict(),
    dict(log_format="with failure {v}", v=1, log_failure=_failure()),
    dict(log_format="own system", log_system="custom-system"),
    dict(log_format="no level", log_level=None),
    dict(log_format="no time", log_time=None),
    dict(log_format="repr of {t!r} ascii {u!a}", t=Thing(), u="é"),
]


def _event(fields: dict, when: float = NOW) -> dict:
    event = dict(log_time=when, log_namespace="hatwist.test", log_level=LogLevel.info)
    event.update(fields)
    return event


@pytest.mark.parametrize("fields", EVENTS, ids=range(len(EVENTS)))
def test_classic_text_is_twisteds_text_exactly(fields):
    event = _event(fields)
    expected = formatEventAsClassicLogText(event, lambda t: formatTime(t, TIME_FORMAT))
    formatter = ClassicTextFormatter()
    assert formatter(event) == expected
    assert formatter(event) == expected  # and again, from the caches


def test_the_cached_time_stamp_follows_the_second():
    formatter = ClassicTextFormatter()
    texts = [formatter(_event(dict(log_format="tick"), when)) for when in
             (NOW, NOW + 0.5, NOW + 0.76, NOW + 3600.0)]
    assert [t.split(" ")[0] for t in texts] == [
        formatTime(w, TIME_FORMAT) for w in (NOW, NOW + 0.5, NOW + 0.76, NOW + 3600.0)]
    assert texts[0].split(" ")[0] != texts[2].split(" ")[0]  # 1764620154 -> ...155


class CountingFile(io.StringIO):
    """A text file that counts the writes that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _running_reactor() -> MemoryReactorClock:
    reactor = MemoryReactorClock()
    reactor.running = True
    return reactor


def _lines(observer, count: int, start: int = 0) -> None:
    log = Logger(namespace="hatwist.test", observer=observer)
    for n in range(start, start + count):
        log.info("line {n}", n=n)


def test_lines_of_one_flush_interval_reach_the_file_in_one_write():
    reactor, out = _running_reactor(), CountingFile()
    observer = BufferedFileLogObserver(out, ClassicTextFormatter(), reactor)
    _lines(observer, 40)
    reactor.advance(FLUSH_INTERVAL / 2)
    _lines(observer, 10, start=40)
    assert out.writes == []  # nothing yet: the interval is not over
    reactor.advance(FLUSH_INTERVAL / 2)
    assert len(out.writes) == 1
    assert [line.split("] ", 1)[1] for line in out.getvalue().splitlines()] == [
        f"line {n}" for n in range(50)]
    _lines(observer, 3, start=50)
    reactor.advance(FLUSH_INTERVAL)
    assert len(out.writes) == 2
    assert out.getvalue().count("\n") == 53


def test_the_reactors_shutdown_flushes_what_is_pending():
    reactor, out = _running_reactor(), CountingFile()
    observer = BufferedFileLogObserver(out, ClassicTextFormatter(), reactor)
    _lines(observer, 5)
    reactor.running = False
    for trigger, args, kwargs in reactor.triggers["after"]["shutdown"]:
        trigger(*args, **kwargs)
    assert out.getvalue().count("\n") == 5
    assert len(out.writes) == 1


def test_lines_write_through_while_the_reactor_is_not_running():
    reactor, out = MemoryReactorClock(), CountingFile()
    observer = BufferedFileLogObserver(out, ClassicTextFormatter(), reactor)
    _lines(observer, 3)
    assert len(out.writes) == 3
    assert reactor.getDelayedCalls() == []


def test_a_burst_over_the_bound_is_written_at_once():
    reactor, out = _running_reactor(), CountingFile()
    observer = BufferedFileLogObserver(out, ClassicTextFormatter(), reactor, max_pending=1000)
    _lines(observer, 100)  # about 60 characters each
    assert len(out.writes) >= 5
    assert max(len(w) for w in out.writes) < 1100
    reactor.advance(FLUSH_INTERVAL)
    assert out.getvalue().count("\n") == 100


def test_a_line_from_another_thread_is_written_after_the_pending_ones():
    reactor, out = _running_reactor(), CountingFile()
    observer = BufferedFileLogObserver(out, ClassicTextFormatter(), reactor)
    _lines(observer, 2)
    worker = threading.Thread(target=_lines, args=(observer, 1, 2))
    worker.start()
    worker.join()
    assert [line.split("] ", 1)[1] for line in out.getvalue().splitlines()] == [
        "line 0", "line 1", "line 2"]


class BrokenFile(CountingFile):
    """A file whose writes fail, as a closed pipe's do."""

    def write(self, text: str) -> int:
        self.writes.append(text)
        raise BrokenPipeError(32, "Broken pipe")


def test_a_file_that_fails_is_written_through_afterwards_not_retried_by_timer():
    reactor, out = _running_reactor(), BrokenFile()
    observer = BufferedFileLogObserver(out, ClassicTextFormatter(), reactor)
    _lines(observer, 2)
    assert len(reactor.getDelayedCalls()) == 1
    with pytest.raises(BrokenPipeError):
        reactor.advance(FLUSH_INTERVAL)
    assert len(out.writes) == 1
    with pytest.raises(BrokenPipeError):  # in the publisher's call, which reports it
        observer(dict(log_format="next", log_time=NOW, log_level=LogLevel.info))
    assert len(out.writes) == 2
    assert reactor.getDelayedCalls() == []


def test_json_records_are_twisteds_records():
    reactor, out, twisted_out = _running_reactor(), CountingFile(), io.StringIO()
    publisher = LogPublisher(BufferedFileLogObserver(out, json_record, reactor),
                             jsonFileLogObserver(twisted_out))
    _lines(publisher, 3)
    reactor.advance(FLUSH_INTERVAL)
    assert len(out.writes) == 1
    assert out.getvalue() == twisted_out.getvalue()
    records = out.getvalue().split("\x1e")[1:]
    assert [eventFromJSON(r)["n"] for r in records] == [0, 1, 2]


def _twist_options(argv: list[str]) -> TwistOptions:
    options = TwistOptions()
    options["reactor"] = object()  # never install one in the test process
    options.parseOptions(argv)
    return options


def test_twist_logs_through_the_buffered_observer_of_its_format(tmp_path):
    config = str(write_config(tmp_path))
    json = _twist_options(["--log-format=json", "hatwist", "--config", config])
    text = _twist_options(["--log-format=text", "hatwist", "--config", config])
    assert json["fileLogObserverFactory"] is buffered_json_observer
    assert text["fileLogObserverFactory"] is buffered_text_observer


def test_twistd_n_logs_to_stdout_through_the_buffered_observer(tmp_path):
    config = str(write_config(tmp_path))
    options = ServerOptions()
    options.parseOptions(["-n", "--pidfile=", "hatwist", "--config", config])
    assert options["logger"] is twistd_stdout_observer


@pytest.mark.parametrize("extra", [["--logfile", "relay.log"], ["--syslog"],
                                   ["--logger", "twisted.logger.textFileLogObserver"]])
def test_other_twistd_destinations_keep_twisteds_observer(tmp_path, extra):
    config = str(write_config(tmp_path))
    options = ServerOptions()
    options.parseOptions(["-n", "--pidfile=", *extra, "hatwist", "--config", config])
    assert options["logger"] in (None, textFileLogObserver)

