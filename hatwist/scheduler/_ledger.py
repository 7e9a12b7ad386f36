# -*- test-case-name: tests.test_scheduler_ledger -*-
"""
The scheduler's ledger: the messages it is responsible for, their parts, the
pending recipients per queue, and writing their state down.

Every change to a message goes through :meth:`Ledger.change`, so the depth of
each (binding, domain) -- pending recipients, what /status and /metrics show
-- is kept as messages change and read in O(queues), never by walking a
million messages.  A queue key is one shared tuple (and so one domain string)
per queue, not one per part.

Held messages (``hatwist queue hold``) stay in the ledger and in their queue's
depth, but :meth:`Ledger.current` calls their parts stale, so whatever holds one
(a queue's line, the due heap) skips it: a held message is never attempted and
never expires.  They are also kept apart (:meth:`Ledger.held`), so listing them
costs O(held), not O(messages).

Saving: :meth:`Ledger.write` hands the state to the spool; if that fails it is
written again every ``SAVE_RETRY_DELAY`` seconds until it is on disk, since a
crash meanwhile would deliver its delivered recipients a second time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from hatwist.spool import DELIVERED, FAILED, PENDING, MessageNotFound, SpooledMessage

from ._outcome import domain_of
from ._queues import Part, QueueKey

#: Seconds before writing down again a state the spool failed to save: until it
#: is on disk, a crash would deliver its delivered recipients a second time.
SAVE_RETRY_DELAY = 30.0


@attrs.define(eq=False, weakref_slot=False)
class Entry:
    """A message the scheduler is responsible for, with its latest state."""

    message: SpooledMessage
    parts: tuple[Part, ...] = ()
    """The parts still to deliver, one per domain (a tuple: most messages have one)."""
    finishing: bool = False
    """Its bounce and removal are under way: nothing else may write it down."""
    held: bool = False
    """Held by the operator (``hatwist queue hold``): its parts count as stale, so
    nothing starts or expires it until it is released."""

    def part(self, domain: str) -> Part | None:
        """The current part for ``domain``, if any."""
        for part in self.parts:
            if part.key[1] == domain:
                return part
        return None

    def drop(self, part: Part) -> None:
        """``part`` is done (delivered or expired): it is stale from now on."""
        self.parts = tuple(p for p in self.parts if p is not part)
        part.heap_seq = None


_STATUSES = {PENDING: PENDING, DELIVERED: DELIVERED, FAILED: FAILED}


def _compact(message: SpooledMessage) -> SpooledMessage:
    """
    ``message`` sharing what a million messages have in common: one string per
    binding and per status, one float when it is due when it was received.  A
    message decoded from disk has its own copy of each (some 130 bytes); one made
    by ``Spool.store`` has them shared already and is returned as it is.
    """
    binding = sys.intern(message.binding)
    statuses = all(_STATUSES.get(r.status) is r.status for r in message.recipients)
    received_at, due = message.received_at, message.next_attempt_at
    if binding is message.binding and statuses and (due is received_at or due != received_at):
        return message
    recipients = message.recipients if statuses else tuple(
        attrs.evolve(r, status=_STATUSES.get(r.status, r.status)) for r in message.recipients
    )
    return attrs.evolve(
        message, binding=binding, recipients=recipients,
        next_attempt_at=received_at if due == received_at else due,
    )


class Ledger:
    """
    :param spool: has ``update(SpooledMessage) -> Deferred``.
    :param reactor: ``IReactorTime``, for the save retries.
    :param log: returns the scheduler's current ``Logger``.
    :param count_error: called once per failed save.
    :param track: keeps a Deferred until it fires (the scheduler's stop waits for it).
    """

    def __init__(
        self,
        spool: Any,
        reactor: Any,
        *,
        log: Callable[[], Logger],
        count_error: Callable[[], None],
        track: Callable[[defer.Deferred], None],
    ) -> None:
        self._spool = spool
        self._reactor = reactor
        self._log = log
        self._count_error = count_error
        self._track = track
        self._entries: dict[str, Entry] = {}
        self._depths: dict[QueueKey, int] = {}
        self._held_depths: dict[QueueKey, int] = {}
        """Pending recipients of held messages per queue (part of ``_depths``)."""
        self._keys: dict[QueueKey, QueueKey] = {}
        self._resave: dict[Entry, IDelayedCall] = {}
        self._held: dict[str, Entry] = {}
        self.stopping = False

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._entries

    def get(self, message_id: str) -> Entry | None:
        return self._entries.get(message_id)

    def entries(self) -> Iterator[Entry]:
        """Every entry, oldest taken first (for ``hatwist queue list``: stop early)."""
        return iter(self._entries.values())

    def held(self) -> list[Entry]:
        """The entries held by the operator, in the order they were held."""
        return list(self._held.values())

    def set_held(self, entry: Entry, held: bool) -> None:
        """Hold ``entry`` (its parts become stale) or release it (O(1)); the caller
        makes the new parts a released entry needs and writes the state down."""
        if held != entry.held:
            self._tally(entry.message, 1 if held else -1, self._held_depths)
        entry.held = held
        if held:
            self._held[entry.message.id] = entry
            for part in entry.parts:
                part.heap_seq = None  # dead in the due heap
        else:
            self._held.pop(entry.message.id, None)

    def key(self, binding: str, domain: str) -> QueueKey:
        """The one shared (binding, domain) tuple of a queue."""
        key = (binding, domain)
        return self._keys.setdefault(key, key)

    def depths(self) -> dict[QueueKey, int]:
        """Pending recipients per queue (only queues that have some); O(queues)."""
        return dict(self._depths)

    def held_depths(self) -> dict[QueueKey, int]:
        """Pending recipients of held messages per queue (only queues that have some)."""
        return dict(self._held_depths)

    def depth(self, key: QueueKey) -> int:
        return self._depths.get(key, 0)

    def add(self, message: SpooledMessage) -> Entry:
        """
        Take charge of ``message`` (not known yet): its entry, with a part due at
        ``next_attempt_at`` for each domain of its pending recipients (sorted; none
        when nothing is pending).  One pass over its recipients.
        """
        message = _compact(message)
        entry = Entry(message)
        self._entries[message.id] = entry
        if message.held_at is not None:  # held before a restart: still held
            entry.held = True
            self._held[message.id] = entry
            self._tally(message, 1, self._held_depths)
        keys: list[QueueKey] = []
        depths, binding = self._depths, message.binding
        for r in message.recipients:
            if r.status is PENDING:
                key = self.key(binding, domain_of(r.address))
                depths[key] = depths.get(key, 0) + 1
                if key not in keys:
                    keys.append(key)
        if keys:
            keys.sort()
            due = message.next_attempt_at
            entry.parts = tuple(Part(entry, key, due) for key in keys)
        return entry

    def change(self, entry: Entry, message: SpooledMessage, *, recount: bool = True) -> None:
        """The entry's message is now ``message``.  ``recount=False`` when no
        recipient's status changed (the depths stay as they are)."""
        if recount and self._entries.get(entry.message.id) is entry:
            self._tally(entry.message, -1)
            self._tally(message, 1)
            if entry.held:
                self._tally(entry.message, -1, self._held_depths)
                self._tally(message, 1, self._held_depths)
        entry.message = message

    def settle(self, entry: Entry, message: SpooledMessage, key: QueueKey, count: int) -> None:
        """The entry's message is now ``message``, in which ``count`` recipients of
        queue ``key`` are no longer pending (delivered, bounced or expired): O(1)."""
        if count and self._entries.get(entry.message.id) is entry:
            depth = self._depths.get(key, 0) - count
            if depth > 0:
                self._depths[key] = depth
            else:
                self._depths.pop(key, None)
                self._keys.pop(key, None)
            if entry.held:  # held while its attempt ran: that attempt's results count
                held = self._held_depths.get(key, 0) - count
                if held > 0:
                    self._held_depths[key] = held
                else:
                    self._held_depths.pop(key, None)
        entry.message = message

    def current(self, part: Part) -> Entry | None:
        """The entry ``part`` is current for, or None for a stale part (its
        message finished or is held, or the part was replaced) that must not start
        or expire."""
        entry = part.entry
        if (self._entries.get(entry.message.id) is not entry or entry.held
                or part not in entry.parts):
            return None
        return entry

    def forget(self, entry: Entry) -> bool:
        """Drop ``entry`` and its parts; False if it was not (or no longer) here."""
        if self._entries.get(entry.message.id) is not entry:
            return False
        del self._entries[entry.message.id]
        self._held.pop(entry.message.id, None)
        self._tally(entry.message, -1)
        if entry.held:
            self._tally(entry.message, -1, self._held_depths)
        for part in entry.parts:
            part.heap_seq = None
        entry.parts = ()  # no cycle (entry <-> part) left for the garbage collector
        call = self._resave.pop(entry, None)
        if call is not None and call.active():
            call.cancel()
        return True

    def _tally(self, message: SpooledMessage, sign: int,
               depths: dict[QueueKey, int] | None = None) -> None:  # fmt: skip
        held = depths is not None
        depths = self._depths if depths is None else depths
        for r in message.recipients:
            if r.status != PENDING:  # not `is`: results and expiry make new recipients
                continue
            # (the held count makes no shared key: it never outlives the queue's depth)
            key = ((message.binding, domain_of(r.address)) if held
                   else self.key(message.binding, domain_of(r.address)))
            depth = depths.get(key, 0) + sign
            if depth:
                depths[key] = depth
            else:
                del depths[key]
                if not held:
                    self._keys.pop(key, None)  # only queues with mail keep a shared key

    # -- saves ---------------------------------------------------------------

    def write(self, entry: Entry) -> defer.Deferred:
        """Write the entry's state to the spool; on failure, again a little later."""
        d = defer.maybeDeferred(self._spool.update, entry.message)
        d.addErrback(self._save_failed, entry)
        return d

    def _save_failed(self, failure: Failure, entry: Entry) -> None:
        if failure.check(MessageNotFound):
            return  # finished meanwhile: nothing left to write down
        # Until the state is on disk a restart would retry recipients that were
        # delivered, so keep trying on a timer, not only at the next change.
        self._count_error()
        self._log().failure(
            "message {message_id}: saving its state to the spool failed; "
            "trying again in {delay}s", failure,
            message_id=entry.message.id, delay=SAVE_RETRY_DELAY)
        if self.stopping or self._entries.get(entry.message.id) is not entry:
            return
        call = self._resave.get(entry)
        if call is None or not call.active():
            self._resave[entry] = self._reactor.callLater(SAVE_RETRY_DELAY, self._again, entry)

    def _again(self, entry: Entry) -> None:
        self._resave.pop(entry, None)
        if self._entries.get(entry.message.id) is entry and not entry.finishing:
            self._track(self.write(entry))

    def timers(self) -> list[IDelayedCall]:
        """The save retries waiting (for a stop)."""
        return list(self._resave.values())
