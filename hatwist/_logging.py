# -*- test-case-name: tests.test_logging -*-
"""
Log observers that write a batch of lines every 10 ms instead of once per event.

Twisted's ``FileLogObserver`` formats each event with ``formatEventAsClassicLogText``
(``str.format`` parsing and a ``strftime`` per event) and then writes *and flushes* it:
one system call per log line, and a relay logs a few lines per message. Measured here
that was about 30% of the reactor thread at ~450 messages per second. These observers
give the same text (or the same RFC 7464 JSON records) but

- keep the lines in memory and hand them to the file in one ``write`` + ``flush``
  :data:`FLUSH_INTERVAL` after the first of them (a reactor timer, so never within a
  turn), or at once when more than :data:`MAX_PENDING` characters are waiting: a crash
  (``kill -9``) loses at most the last 10 ms of lines;
- write through, one event at a time, whenever the reactor is not running (start-up,
  shutdown) or the event comes from another thread, so nothing waits for a turn that
  will never come; the reactor's shutdown and the interpreter's exit flush what is left;
- format classic text from a per-format-string cache and a per-second time stamp cache,
  and fall back to Twisted's own formatter for anything unusual (failures, ``{a.b}``
  fields, ``{f()}`` calls, errors), so the text is exactly Twisted's.

:func:`buffer_logs_of` hooks them into ``twistd -n`` (stdout) and ``twist`` (any
``--log-file``, text or ``--log-format=json``) from the plugin's option parsing; every
other destination (``--logfile FILE``, ``--syslog``, ``--logger``) keeps Twisted's.
"""

from __future__ import annotations

import atexit
import sys
import threading
from collections.abc import Callable
from string import Formatter
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    eventAsJSON,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.compat import ioType
from zope.interface import implementer

from hatwist._chatter import is_chatter

__all__ = [
    "BufferedFileLogObserver",
    "ClassicTextFormatter",
    "buffer_logs_of",
    "buffered_json_observer",
    "buffered_text_observer",
    "twistd_stdout_observer",
]

#: How long the first pending line waits for company. Per turn (0) measured 10% of the
#: reactor thread in pipe writes at ~200 msg/s (a turn rarely holds more than a line or two,
#: and every write syscall also hands the GIL to the spool threads); 10 ms cut it to 4%.
FLUSH_INTERVAL = 0.01
#: Characters pending before a write is made at once: bounds the memory a burst of
#: log lines can hold, whatever the peer makes the relay log.
MAX_PENDING = 64 * 1024
#: Format strings whose parse is remembered; more (a caller formatting its own strings into
#: ``log_format``) fall back to Twisted's formatter rather than grow the cache.
MAX_FORMATS = 1024
#: twistd's and twist's time stamp: ``2026-12-01T20:15:54+0000``.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
#: RFC 7464 record separator, as ``jsonFileLogObserver`` writes it.
RECORD_SEPARATOR = "\x1e"

_Part = tuple[str, str | None, str, str | None]
_CONVERSIONS: dict[str | None, Callable[[Any], Any]] = {
    None: lambda v: v, "s": str, "r": repr, "a": ascii}


class ClassicTextFormatter:
    """
    ``formatEventAsClassicLogText`` with twistd's time format, made cheap for the
    common event: a plain ``log_format`` of ``{name}`` / ``{name!r:spec}`` fields, no
    failure. The parse of each format string is cached (up to :data:`MAX_FORMATS`), and
    so is the time stamp of the current second. Everything else, and any error, goes to
    Twisted's formatter, so the output is byte for byte Twisted's.
    """

    def __init__(self) -> None:
        self._formats: dict[str, tuple[_Part, ...] | None] = {}
        self._second: float | None = None
        self._stamp = "-"

    def __call__(self, event: LogEvent) -> str | None:
        fmt = event.get("log_format")
        if type(fmt) is not str or "log_failure" in event or "log_flattened" in event:
            return self._twisted(event)
        parts = self._formats.get(fmt, ())
        if parts == ():
            parts = self._parse(fmt)
        if parts is None:
            return self._twisted(event)
        try:
            text = "".join([
                literal if field is None
                else literal + format(_CONVERSIONS[conversion](event[field]), spec)
                for literal, field, spec, conversion in parts])
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
            else:
                system = str(system)
        except Exception:
            return self._twisted(event)
        if not text:
            return None
        line = f"{self._time(event.get('log_time'))} [{system}] {text}"
        return line.replace("\n", "\n\t") + "\n"

    def _parse(self, fmt: str) -> tuple[_Part, ...] | None:
        """The literal/field parts of ``fmt``, or ``None`` when only Twisted's formatter
        gets it right (attribute or index lookups, calls, nested specs, bad syntax)."""
        try:
            parsed = tuple(Formatter().parse(fmt))
        except ValueError:
            parsed = None
        if parsed is not None:
            for _, field, spec, conversion in parsed:
                if field is not None and (not field.isidentifier() or "{" in spec
                                          or conversion not in _CONVERSIONS):
                    parsed = None
                    break
        if len(self._formats) < MAX_FORMATS:
            self._formats[fmt] = parsed
        return parsed

    def _time(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = when // 1
        if second != self._second:
            self._stamp, self._second = formatTime(when, TIME_FORMAT), second
        return self._stamp

    def _twisted(self, event: LogEvent) -> str | None:
        return formatEventAsClassicLogText(event, formatTime=self._time)


def json_record(event: LogEvent) -> str:
    """One RFC 7464 record, as ``jsonFileLogObserver`` writes it."""
    return f"{RECORD_SEPARATOR}{eventAsJSON(event)}\n"


@implementer(ILogObserver)
class BufferedFileLogObserver:
    """
    Formats each event at once (so later changes to the event's values do not show) and
    writes the texts of each ``flush_interval`` to ``out_file`` in one write and one flush.
    Twisted's per-connection chatter (:func:`hatwist._chatter.is_chatter`) is dropped.

    ``reactor`` needs ``running`` and ``callLater`` (and ``addSystemEventTrigger``);
    events from any thread but the one that made the observer (the reactor thread under
    twistd and twist) are written through under a lock, after what is pending, so the
    file keeps the order of the events.
    """

    def __init__(self, out_file: IO[Any], format_event: Callable[[LogEvent], str | None],
                 reactor: Any, *, flush_interval: float = FLUSH_INTERVAL,
                 max_pending: int = MAX_PENDING) -> None:
        self._file = out_file
        self._encoding = "utf-8" if ioType(out_file) is not str else None
        self._format = format_event
        self._reactor = reactor
        self._max_pending = max_pending
        self._interval = flush_interval
        self._thread = threading.get_ident()
        self._lock = threading.RLock()
        self._pending: list[str] = []
        self._size = 0
        self._scheduled = False
        self._write_through = False
        reactor.addSystemEventTrigger("after", "shutdown", self.flush)
        atexit.register(self.flush)

    def __call__(self, event: LogEvent) -> None:
        if is_chatter(event):  # a DNS query's UDP port lines: see hatwist._chatter
            return
        text = self._format(event)
        if not text:
            return
        with self._lock:
            self._pending.append(text)
            self._size += len(text)
            if (self._size >= self._max_pending or self._write_through
                    or not self._reactor.running or threading.get_ident() != self._thread):
                self._write()
            elif not self._scheduled:
                self._scheduled = True
                self._reactor.callLater(self._interval, self._due)

    def _due(self) -> None:
        with self._lock:
            self._scheduled = False
            try:
                self._write()
            except Exception:
                # The file is broken (closed pipe, full disk): write through from now on, so
                # the next failure happens inside the publisher's call, which reports a
                # failing observer once, instead of a timer error that logs itself again.
                self._write_through = True
                raise

    def flush(self) -> None:
        """Write whatever is pending now (the stop and exit hooks call it)."""
        with self._lock:
            self._write()

    def _write(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        self._file.write(text if self._encoding is None else text.encode(self._encoding))
        self._file.flush()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def buffered_text_observer(out_file: IO[Any]) -> BufferedFileLogObserver:
    """``textFileLogObserver(out_file)``'s lines, written in batches."""
    return BufferedFileLogObserver(out_file, ClassicTextFormatter(), _reactor())


def buffered_json_observer(out_file: IO[Any]) -> BufferedFileLogObserver:
    """``jsonFileLogObserver(out_file)``'s records, written in batches."""
    return BufferedFileLogObserver(out_file, json_record, _reactor())


def twistd_stdout_observer() -> BufferedFileLogObserver:
    """twistd's ``--logger`` factory for ``-n`` logging to stdout (see :func:`buffer_logs_of`).
    twistd calls it before it redirects stdout into the log, so this is the real stdout."""
    return buffered_text_observer(sys.stdout)


def buffer_logs_of(runner_options: Any) -> None:
    """
    Make the ``twistd`` or ``twist`` whose options are ``runner_options`` (the plugin
    options' ``parent``; ``None`` outside those runners) log through the buffered
    observers. Called from the plugin's ``postOptions``, which runs after the runner's
    own options were read and before its logging starts:

    - ``twist``: its ``fileLogObserverFactory`` (chosen by ``--log-format`` or the tty
      check) is swapped for the buffered one of the same format;
    - ``twistd``: when it would log text to stdout (``-n`` with no ``--logfile`` or
      ``--logfile=-``; no ``--syslog``, no ``--logger``), ``--logger`` is set to
      :func:`twistd_stdout_observer` (by name: twistd resolves it after this).
    """
    if runner_options is None:
        return
    if "fileLogObserverFactory" in runner_options:
        factory = runner_options["fileLogObserverFactory"]
        if factory is textFileLogObserver:
            runner_options["fileLogObserverFactory"] = buffered_text_observer
        elif factory is jsonFileLogObserver:
            runner_options["fileLogObserverFactory"] = buffered_json_observer
        return
    if ("logger" in runner_options and runner_options["logger"] is None
            and not runner_options.get("syslog") and runner_options.get("nodaemon")
            and runner_options.get("logfile") in (None, "", "-")):
        runner_options["logger"] = f"{__name__}.{twistd_stdout_observer.__name__}"
