# -*- test-case-name: tests.health -*-
"""
Errors of the proxy health machinery, one meaning per class.

A probe's failure message is what an operator reads in the registry's
``last_error`` and in the state-change log line, so each one says what was
tried and what went wrong in words, not codes.
"""


class HealthError(Exception):
    """
    Base class for everything hatwist.health raises on purpose.
    """


class UnknownServerError(HealthError, LookupError):
    """
    A server was named that the registry does not hold (not in the config).
    """

    def __init__(self, server: object, known: tuple[object, ...]) -> None:
        names = ", ".join(str(s) for s in known) or "none"
        super().__init__(f"proxy server {server} is not configured (configured: {names})")
        self.server = server


class ProbeError(HealthError):
    """
    A health check ran and found the server unfit; the message is the reason.
    """


class CheckTimedOut(ProbeError):
    """
    A check produced no result within the health check timeout and was abandoned.
    """

    def __init__(self, timeout: float, what: str = "check") -> None:
        super().__init__(f"{what} timed out after {timeout:g}s")
        self.timeout = timeout


class NoBanner(ProbeError):
    """
    The connection closed before any SMTP reply line arrived.

    Behind HAProxy this is the one symptom of both an unusable source address and
    an unreachable target: HAProxy cannot tell its client which it was.
    """


class BadBanner(ProbeError):
    """
    The first SMTP reply line was not a ``220`` greeting.
    """


def describe(error: BaseException) -> str:
    """
    One line saying why a check failed, for ``last_error`` and the log.

    Our own errors are already written for people; anything else (a refused
    connect, a resolver error, a bug in a probe) keeps its class name, which is
    often the most telling part.
    """
    if isinstance(error, ProbeError):
        return str(error)
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text}" if text else name
