"""hatwist.config.syntax: text to a tree of scopes, with lines and columns."""

from __future__ import annotations

import pytest

from hatwist.config.errors import ConfigSyntaxError
from hatwist.config.syntax import ROOT, Scope, Setting, parse


def test_bare_and_quoted_values_and_comments():
    root = parse('a = b c   # comment\nq = "x # not a comment"\n')
    assert root.kind == ROOT
    assert root.settings == (
        Setting("a", "b c", 1, 1, 5),
        Setting("q", "x # not a comment", 2, 1, 5),
    )


def test_quoted_escapes():
    (setting,) = parse(r'k = "say \"hi\" \\ bye"').settings
    assert setting.value == 'say "hi" \\ bye'


def test_unknown_escape_is_an_error_at_its_column():
    with pytest.raises(ConfigSyntaxError) as info:
        parse(r'k = "a\nb"')
    assert (info.value.line, info.value.column) == (1, 7)
    assert "unknown escape" in info.value.message


def test_keys_and_scope_kinds_are_lower_cased_names_kept():
    root = parse('BINDING "Pool A" {\n  Domain Example.COM { KEY = v }\n}\n')
    (binding,) = root.scopes
    assert (binding.kind, binding.name, binding.line) == ("binding", "Pool A", 1)
    (domain,) = binding.scopes
    assert (domain.kind, domain.name, domain.line, domain.column) == ("domain", "Example.COM", 2, 3)
    assert domain.settings[0].key == "key"


def test_unnamed_scope_and_items_keep_file_order():
    root = parse("a = 1\nx { }\nb = 2\n")
    assert [type(i).__name__ for i in root.items] == ["Setting", "Scope", "Setting"]
    assert root.scopes == (Scope("x", None, 2, 1, ()),)


def test_value_may_end_at_a_closing_brace_on_the_same_line():
    (scope,) = parse("d x { k = v }").scopes
    assert scope.settings[0].value == "v"


def test_unclosed_scope_names_the_line_it_opened_on():
    with pytest.raises(ConfigSyntaxError) as info:
        parse("a = 1\n\nbinding b {\n  k = v\n")
    assert info.value.line == 3
    assert "binding b" in info.value.message and "never closed" in info.value.message


def test_stray_closing_brace_names_its_line():
    with pytest.raises(ConfigSyntaxError) as info:
        parse("a { }\n  }\n")
    assert (info.value.line, info.value.column) == (2, 3)


def test_a_stray_brace_names_where_the_last_scope_opened_and_closed():
    with pytest.raises(ConfigSyntaxError) as info:
        parse("binding b {\n  domain x {\n    tls = no\n}\n}\n}\n")
    assert str(info.value) == (
        "<string>:6:1: '}' without an open scope to close"
        " (the last scope, 'binding b' opened on line 1, was closed on line 5)"
    )


def test_an_unclosed_scope_names_the_block_whose_brace_is_probably_missing():
    with pytest.raises(ConfigSyntaxError) as info:
        parse("binding b {\n  domain x {\n    tls = no\n}\nbinding c {\n}\n")
    assert str(info.value) == (
        "<string>:1:1: scope 'binding b' opened on line 1 is never closed (missing '}');"
        " probably the '}' of 'domain x' (line 2) is the one missing: the '}' on line 4"
        " that closes it is indented like an outer scope"
    )


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ('k = "open', 5, "not closed"),
        ("k =", 3, "no value"),
        ("k = ", 3, "no value"),
        ('k = "a" b', 9, "mixes"),
        ("k = a = b", 7, "unexpected '='"),
        ("k = a { ", 7, "unexpected '{'"),
        ("k v w", 3, "expected '=' or '{'"),
        ("k", 2, "expected '=' or '{'"),
        ('"k" = v', 1, "quoted string"),
        ("{ }", 1, "without a scope name"),
        ("= v", 1, "without a key"),
    ],
)
def test_malformed_lines(text, column, words):
    with pytest.raises(ConfigSyntaxError) as info:
        parse(text, "f.conf")
    assert (info.value.filename, info.value.line, info.value.column) == ("f.conf", 1, column)
    assert words in info.value.message


def test_deep_nesting_is_not_limited_by_recursion():
    depth = 5000
    root = parse("a {\n" * depth + "}\n" * depth)
    assert root.scopes[0].kind == "a"


def test_crlf_line_endings():
    (setting,) = parse("k = v\r\n").settings
    assert setting.value == "v"
