"""What can be wrong with a config file (tests: tests/config/test_errors.py).

Every problem names the file, the line (and the column where it helps) and what is wrong,
because the person reading the message is editing that file. Each subclass has one meaning,
so callers and tests can tell a typo from a misplaced key from a bad value.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


def _location(filename: str, line: int | None, column: int | None) -> str:
    parts = [filename]
    if line is not None:
        parts.append(str(line))
        if column is not None:
            parts.append(str(column))
    return ":".join(parts)


class ConfigError(Exception):
    """The config cannot be used; ``str()`` is ``FILE:LINE:COL: message``.

    ``kind`` names the class of problem in one word, for ``check-config --json``.
    """

    kind = "error"

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

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Every problem this error stands for, in file order: just itself here."""
        return (self,)


class ConfigErrors(ConfigError):
    """Several problems found in one pass over the file, so one run lists them all.

    ``errors`` holds each one (never a ConfigErrors) in file order; ``str()`` is one
    ``FILE:LINE:COL: message`` line per problem, and the position attributes are the
    first problem's, so code that reads only one still points at a real line.
    """

    kind = "errors"

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        first = errors[0]
        super().__init__(
            f"{len(errors)} problems, the first: {first.message}",
            first.filename,
            first.line,
            first.column,
        )
        self._errors = tuple(errors)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self._errors)

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors


def collected(errors: Sequence[ConfigError]) -> ConfigError:
    """The error to raise for ``errors`` (not empty): the one itself, or all of them."""
    ordered = sorted(
        (single for error in errors for single in error.errors),
        key=lambda e: (e.line or 0, e.column or 0),
    )
    return ordered[0] if len(ordered) == 1 else ConfigErrors(ordered)


class ConfigFileError(ConfigError):
    """The file could not be read at all (missing, unreadable, not UTF-8)."""

    kind = "file"


class ConfigSyntaxError(ConfigError):
    """The text is not well formed: braces, quotes, a missing ``=`` or value."""

    kind = "syntax"


class UnknownKeyError(ConfigError):
    """A key or scope name that hatwist does not know (usually a typo)."""

    kind = "unknown"


class MisplacedKeyError(ConfigError):
    """A known key or scope inside a scope where it means nothing."""

    kind = "misplaced"


class InvalidValueError(ConfigError):
    """A value of the wrong type, out of range, or an address of the wrong family."""

    kind = "invalid"


class DuplicateError(ConfigError):
    """Something set twice where once is the only meaning: a key, a binding, a domain."""

    kind = "duplicate"


class InconsistentSettingsError(ConfigError):
    """Values that are fine alone but contradict each other (timeout >= interval, ...)."""

    kind = "inconsistent"


@attrs.frozen
class ConfigWarning:
    """A config that loads but probably does not do what its author wants."""

    filename: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{_location(self.filename, self.line, None)}: {self.message}"
