"""``hatwist check-config FILE`` (tests: tests/test_cli_check_config.py).

Validates a config file and shows what it means: the service and health settings, the
proxy servers with the source addresses used through each, and the effective delivery
settings of every binding and domain override. Exit status 0 when valid, 2 when not,
after listing every problem found in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import attrs

from hatwist._text_table import text_table
from hatwist.config import Binding, Config, ConfigError, load_config, schema

EXIT_VALID = 0
EXIT_INVALID = 2

_ALL_DOMAINS = "(all domains)"
_OTHER_DOMAINS = "(other domains)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``check-config`` sub-command to the ``hatwist`` command."""
    parser = subparsers.add_parser(
        "check-config",
        help="validate a config file and print the effective settings",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("file", metavar="FILE", help="the config file to check")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = load_config(args.file)
    except ConfigError as e:
        # Every problem found in the one run: a syntax error stops the parse, but past
        # it each key and block of every scope is checked (hatwist.config.errors).
        for problem in e.errors:
            print(problem, file=err)
        if len(e.errors) > 1:
            print(f"{args.file}: {len(e.errors)} problems", file=err)
        if args.json:
            json.dump(errors_json(args.file, e), out, indent=2)
            out.write("\n")
        return EXIT_INVALID
    for warning in config.warnings:
        print(f"warning: {warning}", file=err)
    if args.json:
        json.dump(as_json(config), out, indent=2)
        out.write("\n")
    else:
        out.write(as_text(config))
    return EXIT_VALID


def errors_json(filename: str, error: ConfigError) -> dict[str, Any]:
    """An invalid file as JSON: every problem with its position and kind."""
    return {
        "file": filename,
        "valid": False,
        "errors": [
            {
                "file": problem.filename,
                "line": problem.line,
                "column": problem.column,
                "kind": problem.kind,
                "message": problem.message,
            }
            for problem in error.errors
        ],
    }


def _formatted(values: dict[str, Any]) -> dict[str, str]:
    return {name: schema.KEYS_BY_NAME[name].format(value) for name, value in values.items()}


def _section_values(value: Any, section: schema.Section) -> dict[str, Any]:
    return {key.name: getattr(value, key.field) for key in schema.KEYS if key.section is section}


def _delivery(binding: Binding, domain: str | None) -> dict[str, Any]:
    settings = binding.settings_for(domain) if domain else binding.base_settings
    return _section_values(settings, schema.Section.DELIVERY)


def as_json(config: Config) -> dict[str, Any]:
    """The whole resolved config as plain JSON data, keyed by config key names."""

    def plain(values: dict[str, Any]) -> dict[str, Any]:
        return {name: schema.json_value(value) for name, value in values.items()}

    return {
        "file": config.filename,
        "valid": True,
        "warnings": [attrs.asdict(w) for w in config.warnings],
        "service": plain(_section_values(config.service, schema.Section.SERVICE)),
        "health": plain(_section_values(config.health, schema.Section.HEALTH)),
        "proxy_servers": [
            {"server": str(server), "sources": list(config.sources_for(server))}
            for server in config.proxy_servers
        ],
        "submitters": submitters(config),
        "groups": groups(config),
        "bindings": {
            name: {
                "group": binding.group,
                "settings": plain(_delivery(binding, None)),
                "domains": {d: plain(_delivery(binding, d)) for d in binding.domain_overrides()},
            }
            for name, binding in config.bindings.items()
        },
    }


def submitters(config: Config) -> dict[str, Any]:
    """Who may submit, and through which binding: the effective policy in words."""
    service = config.service
    tls = service.inbound_tls
    auth = service.auth_users_file is not None
    relay = " ".join(str(n) for n in service.relay_from)
    anyone = f"clients in relay_from ({relay})" + (" and logged-in users" if auth else "")
    per_binding = {}
    for name, binding in config.bindings.items():
        policy = binding.base_settings.allowed_submitters
        if policy is None:
            per_binding[name] = f"any client allowed to relay: {anyone}"
        else:
            who = [*(str(n) for n in policy.networks), *(f"user {u}" for u in policy.users)]
            per_binding[name] = "only " + ", ".join(who) + " (and only if allowed to relay)"
    per_group = {
        name: "as every one of its bindings allows: " + ", ".join(group.members)
        if any(config.binding(m).base_settings.allowed_submitters is not None
               for m in group.members) else f"any client allowed to relay: {anyone}"
        for name, group in config.groups.items()
    }
    return {
        "starttls": "off" if tls is None else tls.value,
        "auth": ("PLAIN LOGIN over TLS, users from " + str(service.auth_users_file)) if auth
        else "off",
        "relay": anyone,
        "bindings": per_binding,
        "groups": per_group,
    }


def groups(config: Config) -> dict[str, Any]:
    """What ``X-Binding-Group`` may name: each group's bindings with their weights (the
    share of its attempts each takes while it has a plumbed path)."""
    return {
        name: {member: config.binding(member).base_settings.binding_weight
               for member in group.members}
        for name, group in config.groups.items()
    }


def _key_table(values: dict[str, Any]) -> list[str]:
    return text_table(["key", "value"], ([k, v] for k, v in _formatted(values).items()))


def as_text(config: Config) -> str:
    """The resolved config as aligned tables for a person."""
    lines = [f"{config.filename}: valid", "", "service (top level)"]
    lines += _key_table(_section_values(config.service, schema.Section.SERVICE))
    lines += ["", f"health checks ({schema.MODULE})"]
    lines += _key_table(_section_values(config.health, schema.Section.HEALTH))
    lines += ["", "proxy servers"]
    if config.proxy_servers:
        lines += text_table(
            ["server", "sources"],
            (
                [str(s), " ".join(config.sources_for(s)) or "(not used by any binding)"]
                for s in config.proxy_servers
            ),
        )
    else:
        lines.append("  (none: every binding delivers directly)")
    policy = submitters(config)
    lines += ["", "submitters"]
    lines += text_table(["who", "may"], [
        ["STARTTLS", policy["starttls"]], ["AUTH", policy["auth"]],
        ["relaying", policy["relay"]],
        *([f"binding {name}", who] for name, who in policy["bindings"].items()),
        *([f"binding_group {name}", who] for name, who in policy["groups"].items()),
    ])
    if config.groups:
        lines += ["", "binding groups (X-Binding-Group: each attempt takes one binding with a "
                  "plumbed path, by weight)"]
        lines += text_table(["group", "bindings (weight)"], (
            [name, ", ".join(f"{b} ({w})" for b, w in weights.items())]
            for name, weights in groups(config).items()))
    for name, binding in config.bindings.items():
        group = f" (binding_group {binding.group})" if binding.group else ""
        domains = binding.domain_overrides()
        columns = [_formatted(_delivery(binding, d)) for d in (None, *domains)]
        lines += ["", f"binding {name}{group}"]
        lines += text_table(
            ["key", _OTHER_DOMAINS if domains else _ALL_DOMAINS, *domains],
            ([key, *(column[key] for column in columns)] for key in columns[0]),
        )
    return "\n".join(lines) + "\n"
