# -*- test-case-name: tests.test_scheduler_groups -*-
"""
Which binding of a binding_group takes the next attempt: smooth weighted round robin.

Mail sent with ``X-Binding-Group: G`` is queued for the group; each attempt picks one
of G's bindings, in proportion to their ``binding_weight``, among those the caller
found usable (a plumbed proxy path for the MX's address family).  Smooth weighted
round robin (nginx's upstream algorithm) rather than a random draw: over any run of
attempts every binding's share is within one attempt of its weight's, so a test (and
an operator reading the metrics) sees the configured split, not a sample of it, and
weights 5:1 interleave instead of sending five in a row.  A binding left out of a
round (unusable then) neither gains nor loses credit, so it rejoins at its share.

Pure: no reactor, no I/O.  The state is one number per (group, binding) of the
current config, pruned to the group's members at every pick.
"""

from __future__ import annotations

from collections.abc import Sequence


class Chooser:
    """The running credits of every group's bindings."""

    def __init__(self) -> None:
        self._credit: dict[str, dict[str, int]] = {}

    def order(self, group: str, members: Sequence[str],
              usable: Sequence[tuple[str, int]]) -> list[str]:  # fmt: skip
        """
        The usable bindings in the order to ask them for this attempt: the round's pick
        first, then the others by weight (heaviest first, file order among equals), for a
        caller whose first choice is refused a start (its throttle or its connections).

        :param members: all of the group's bindings now (the credit of others is dropped).
        :param usable: ``(binding, weight)`` of those that could take it, weight >= 1.
        """
        credit = self._credit.setdefault(group, {})
        if len(credit) > len(members) or any(name not in members for name in credit):
            for name in [n for n in credit if n not in members]:
                del credit[name]
        if not usable:
            return []
        total = 0
        best: str | None = None
        for name, weight in usable:
            total += weight
            credit[name] = credit.get(name, 0) + weight
            if best is None or credit[name] > credit[best]:
                best = name
        assert best is not None
        credit[best] -= total
        rest = sorted((entry for entry in usable if entry[0] != best),
                      key=lambda entry: -entry[1])  # sorted() is stable: file order kept
        return [best, *(name for name, _ in rest)]

    def forget(self, groups: Sequence[str]) -> None:
        """Drop the credits of groups no longer configured (after a reload)."""
        for name in [g for g in self._credit if g not in groups]:
            del self._credit[name]
