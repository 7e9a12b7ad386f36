"""What can be wrong with a config file (tests: tests/config/test_errors.py).

Every problem names the file, the line (and the column where it helps) and what is wrong,
because the person reading the message is editing that file. Each subclass has one meaning,
so callers and tests can tell a typo from a misplaced key from a bad value.
"""

from __future__ import annotations

import attrs


def _location(filename: str, line: int | None, column: int | None) -> str:
    parts = [filename]
    if line is not None:
        parts.append(str(line))
        if column is not None:
            parts.append(str(column))
    return ":".join(parts)


class ConfigError(Exception):
    """The config cannot be used; ``str()`` is ``FILE:LINE:COL: message``."""

    def __init__(
        self,
        message: str,
        filename: str = "<string>",
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column

    def __str__(self) -> str:
        return f"{_location(self.filename, self.line, self.column)}: {self.message}"


class ConfigFileError(ConfigError):
    """The file could not be read at all (missing, unreadable, not UTF-8)."""


class ConfigSyntaxError(ConfigError):
    """The text is not well formed: braces, quotes, a missing ``=`` or value."""


class UnknownKeyError(ConfigError):
    """A key or scope name that hatwist does not know (usually a typo)."""


class MisplacedKeyError(ConfigError):
    """A known key or scope inside a scope where it means nothing."""


class InvalidValueError(ConfigError):
    """A value of the wrong type, out of range, or an address of the wrong family."""


class DuplicateError(ConfigError):
    """Something set twice where once is the only meaning: a key, a binding, a domain."""


class InconsistentSettingsError(ConfigError):
    """Values that are fine alone but contradict each other (timeout >= interval, ...)."""


@attrs.frozen
class ConfigWarning:
    """A config that loads but probably does not do what its author wants."""

    filename: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{_location(self.filename, self.line, None)}: {self.message}"
