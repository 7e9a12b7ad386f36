"""Config text to a tree of scopes, with line and column (tests: tests/config/test_syntax.py).

The syntax is Momentum's ecelerity.conf style, as in the seed's examples::

    # a comment
    key = value                  # bare value: the rest of the line, words joined by one space
    key = "quoted \\" value"     # quoted value: \\" and \\\\ are the only escapes
    name { ... }                 # a scope
    name NAME { ... }            # a named scope; NAME bare or quoted

This module knows nothing about which keys or scopes exist (that is the schema's job); it
only promises a well-formed tree or a :class:`ConfigSyntaxError` naming the line. Keys and
scope kinds are lower-cased here, because the file format is case-insensitive.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator

import attrs

from hatwist.config.errors import ConfigSyntaxError

_Fail = Callable[[str, "_Token"], ConfigSyntaxError]

ROOT = ""
"""The kind of the implicit top-level scope."""

_SPECIAL = frozenset('{}="#')


class _Kind(enum.Enum):
    WORD = "a word"
    STRING = "a quoted string"
    OPEN = "'{'"
    CLOSE = "'}'"
    EQUALS = "'='"
    NEWLINE = "the end of the line"
    END = "the end of the file"


@attrs.frozen
class _Token:
    kind: _Kind
    text: str
    line: int
    column: int


@attrs.frozen
class Setting:
    """One ``key = value`` line."""

    key: str
    value: str
    line: int
    column: int
    value_column: int


@attrs.frozen
class Scope:
    """A ``kind [name] { ... }`` block; ``items`` keeps settings and scopes in file order.

    ``end_line`` and ``end_column`` are where its ``}`` stands (None for the top level),
    so a check can tell a ``}`` that lines up with an outer scope: the usual sign that
    a brace is missing higher up.
    """

    kind: str
    name: str | None
    line: int
    column: int
    items: tuple[Setting | Scope, ...]
    end_line: int | None = attrs.field(default=None, eq=False)
    end_column: int | None = attrs.field(default=None, eq=False)

    @property
    def label(self) -> str:
        """``domain example.com``: the scope as written, for messages."""
        return self.kind if self.name is None else f"{self.kind} {self.name}"

    @property
    def misaligned_close(self) -> bool:
        """True when its ``}`` is on a later line and further left than its header.

        Momentum-style files indent a ``}`` like the line that opened the scope; one
        further left lines up with an outer scope, so the brace that really closes this
        scope is probably missing and this one was meant for the outer scope.
        """
        return (
            self.end_line is not None
            and self.end_column is not None
            and self.end_line != self.line
            and self.end_column < self.column
        )

    @property
    def settings(self) -> tuple[Setting, ...]:
        return tuple(i for i in self.items if isinstance(i, Setting))

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return tuple(i for i in self.items if isinstance(i, Scope))


def _tokenize(text: str, filename: str) -> Iterator[_Token]:
    line_no = 0
    for line_no, line in enumerate(text.split("\n"), start=1):
        i = 0
        while i < len(line):
            char = line[i]
            if char.isspace():
                i += 1
            elif char == "#":
                break
            elif char == '"':
                start = i
                value, i = _read_quoted(line, start, line_no, filename)
                yield _Token(_Kind.STRING, value, line_no, start + 1)
            elif char in "{}=":
                kind = {"{": _Kind.OPEN, "}": _Kind.CLOSE, "=": _Kind.EQUALS}[char]
                yield _Token(kind, char, line_no, i + 1)
                i += 1
            else:
                start = i
                while i < len(line) and not line[i].isspace() and line[i] not in _SPECIAL:
                    i += 1
                yield _Token(_Kind.WORD, line[start:i], line_no, start + 1)
        yield _Token(_Kind.NEWLINE, "", line_no, len(line) + 1)
    yield _Token(_Kind.END, "", max(line_no, 1), 1)


def _read_quoted(line: str, start: int, line_no: int, filename: str) -> tuple[str, int]:
    """Read a quoted string starting at ``line[start] == '"'``; return (value, next index)."""
    out = []
    i = start + 1
    while i < len(line):
        char = line[i]
        if char == '"':
            return "".join(out), i + 1
        if char == "\\":
            escaped = line[i + 1 : i + 2]
            if escaped not in ('"', "\\"):
                raise ConfigSyntaxError(
                    f"unknown escape '\\{escaped}' in a quoted string"
                    ' (only \\" and \\\\ are escapes)',
                    filename,
                    line_no,
                    i + 1,
                )
            out.append(escaped)
            i += 2
        else:
            out.append(char)
            i += 1
    raise ConfigSyntaxError(
        "quoted string is not closed on this line (missing '\"')", filename, line_no, start + 1
    )


@attrs.define
class _OpenScope:
    """A scope being filled in while its ``}`` has not been seen yet."""

    kind: str
    name: str | None
    line: int
    column: int
    items: list[Setting | Scope] = attrs.Factory(list)

    def close(self, end: _Token | None = None) -> Scope:
        return Scope(
            self.kind,
            self.name,
            self.line,
            self.column,
            tuple(self.items),
            end.line if end else None,
            end.column if end else None,
        )


def parse(text: str, filename: str = "<string>") -> Scope:
    """Parse config text into its top-level scope; raises ConfigSyntaxError.

    Nesting is tracked with an explicit stack, not recursion, so no input can exhaust
    Python's recursion limit.
    """
    tokens = list(_tokenize(text, filename))
    stack = [_OpenScope(ROOT, None, 1, 1)]
    pos = 0
    misaligned: Scope | None = None  # the first scope closed by a '}' left of its header

    def fail(message: str, token: _Token) -> ConfigSyntaxError:
        return ConfigSyntaxError(message, filename, token.line, token.column)

    while True:
        token = tokens[pos]
        if token.kind is _Kind.END:
            break
        if token.kind is _Kind.NEWLINE:
            pos += 1
        elif token.kind is _Kind.CLOSE:
            if len(stack) == 1:
                message = "'}' without an open scope to close"
                last = next((i for i in reversed(stack[0].items) if isinstance(i, Scope)), None)
                if last is not None:
                    message += (
                        f" (the last scope, '{last.label}' opened on line {last.line},"
                        f" was closed on line {last.end_line})"
                    )
                raise fail(message, token)
            closed = stack.pop().close(token)
            stack[-1].items.append(closed)
            if closed.misaligned_close and misaligned is None:
                misaligned = closed
            pos += 1
        elif token.kind is _Kind.WORD:
            pos = _statement(tokens, pos, stack, fail)
        elif token.kind is _Kind.STRING:
            raise fail("expected a key or a scope name, found a quoted string", token)
        elif token.kind is _Kind.OPEN:
            raise fail("'{' without a scope name before it", token)
        else:
            raise fail("'=' without a key before it", token)

    if len(stack) > 1:
        unclosed = stack[-1]
        label = unclosed.kind if unclosed.name is None else f"{unclosed.kind} {unclosed.name}"
        message = f"scope '{label}' opened on line {unclosed.line} is never closed (missing '}}')"
        if misaligned is not None and misaligned.line > unclosed.line:
            message += (
                f"; probably the '}}' of '{misaligned.label}' (line {misaligned.line}) is the"
                f" one missing: the '}}' on line {misaligned.end_line} that closes it is"
                " indented like an outer scope"
            )
        raise ConfigSyntaxError(message, filename, unclosed.line, unclosed.column)
    return stack[0].close()


def _statement(tokens: list[_Token], pos: int, stack: list[_OpenScope], fail: _Fail) -> int:
    """Parse ``key = value`` or a scope header starting at the WORD ``tokens[pos]``."""
    word = tokens[pos]
    following = tokens[pos + 1]
    if following.kind is _Kind.EQUALS:
        return _setting(tokens, pos, stack, fail)
    if following.kind is _Kind.OPEN:
        stack.append(_OpenScope(word.text.lower(), None, word.line, word.column))
        return pos + 2
    if following.kind in (_Kind.WORD, _Kind.STRING) and tokens[pos + 2].kind is _Kind.OPEN:
        stack.append(_OpenScope(word.text.lower(), following.text, word.line, word.column))
        return pos + 3
    raise fail(f"expected '=' or '{{' after '{word.text}', found {following.kind.value}", following)


def _setting(tokens: list[_Token], pos: int, stack: list[_OpenScope], fail: _Fail) -> int:
    key, equals = tokens[pos], tokens[pos + 1]
    pos += 2
    parts: list[_Token] = []
    while tokens[pos].kind not in (_Kind.NEWLINE, _Kind.CLOSE, _Kind.END):
        token = tokens[pos]
        if token.kind in (_Kind.EQUALS, _Kind.OPEN):
            raise fail(f"unexpected {token.kind.value} in the value of '{key.text}'", token)
        parts.append(token)
        pos += 1
    if not parts:
        raise fail(f"'{key.text}' has no value after '='", equals)
    strings = [t for t in parts if t.kind is _Kind.STRING]
    if strings and len(parts) > 1:
        extra = parts[1] if parts[0].kind is _Kind.STRING else strings[0]
        raise fail(
            f"the value of '{key.text}' mixes a quoted string with other text"
            " (quote the whole value)",
            extra,
        )
    value = " ".join(t.text for t in parts)
    stack[-1].items.append(Setting(key.text.lower(), value, key.line, key.column, parts[0].column))
    return pos
