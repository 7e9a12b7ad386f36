# -*- test-case-name: tests.test_scheduler -*-
"""
The queue runner: every spooled message is tried, retried, bounced or removed.

The unit of work is a *part*: one message's pending recipients at one domain,
sent as one ``OutboundMessage``.  Parts wait in a queue per (binding, domain),
which runs at most ``max_connections`` attempts at once; queues take turns
(round robin), so a busy domain cannot starve a quiet one, and at most
``max_in_flight`` attempts run over all queues.

Promises, in the order they matter:

- Accepted mail is never dropped.  Whatever goes wrong inside hatwist -- the
  agent raising, the spool failing -- is logged and treated as a temporary
  failure; the message stays spooled and is retried.
- Per-recipient results are written to the spool as soon as an attempt ends, so
  a restart never delivers a recipient twice that was recorded as delivered;
  a failed write is tried again every ``SAVE_RETRY_DELAY`` seconds.
- A message whose route has no plumbed proxy does not spend retries: its queue
  is held until the registry reports one of the route's servers plumbed again,
  or one health-check interval has passed.
  Attempts that failed through a proxy shortly before the health check saw it
  go wait for it the same way, instead of a full backoff.
- A destination where no MX greeted a session at all pauses its queue for one
  ``retry_interval``: a dead domain costs ``max_connections`` attempts per
  interval, not one per queued message.  A session that greeted and then broke
  defers only its own message.  A reload (:meth:`Scheduler.config_changed`)
  re-times running pauses and backoffs to the new ``retry_interval``.
- A queue whose ``outbound_throttle_messages`` (N per SECONDS) is used up
  starts nothing until its window allows the next start, then resumes by
  itself; a message counts when its attempt starts.  Waiting is no attempt:
  no backoff, no counter, no bounce.  A reload is seen within
  ``THROTTLE_RECHECK`` seconds.
- Mail sent to a binding_group waits in the group's queue (``group:NAME``); each
  attempt runs on one of the group's bindings, by ``binding_weight``, among
  those with a plumbed path for the MX's address family, under that binding's
  own throttle and connection slots: a dead source IP moves the group's mail to
  the others instead of holding it.
- A message runs out of time at its expiry, even waiting in a held queue or
  behind its throttle.
- At start the spool is read in batches, one reactor turn each: mail is
  delivered, accepted and /status answered while a million messages are read.
- A recipient that failed for good is bounced at the end of the pass in which it
  failed (one DSN per pass, never for a null sender), not when the whole message
  is done; one "delayed" DSN follows ``delay_warning_time`` if set.  A DSN is
  spooled and scheduled like any other message before the state that says it
  was sent is saved, and before the finished original is removed: a crash in
  between can repeat a notice, never lose one.
- An attempt cancelled at shutdown tries no further MX and leaves its message
  spooled; one held for want of a plumbed proxy gives its throttle start back.

Retry times and expiry come from :mod:`hatwist.schedule`; time comes from the
injected reactor.  Everything a status face asks (``queue_depths``,
``queue_states``, ``counters``) costs O(queues), never O(messages): depths are
kept as messages change, and a queue's next retry is the head of its due heap.

Layout, pure first: ``_queues`` (parts, queues and their turn-taking),
``_outcome`` (what a result does to a message's state), ``_rules`` (what config
and proxy health say about a queue), ``_states`` (why a queue waits, for the
status faces); then ``_ledger`` (the entries, their depths per queue, their
saves), ``_due`` (one heap per queue and one DelayedCall for the earliest
part), ``_waits`` (the hold, pause and throttle timers), ``_dispatch`` (takes
due parts off the board and runs their attempts), ``_record`` (what an
attempt's results or an expiry do), ``_proxy`` (the reactions to proxy state
changes), ``_bounce`` and ``_notices`` (what a sender is owed, and the DSNs
at the end of each pass), ``_finish`` (the last bounce, then the removal),
``_retime`` (a reload's new due times), ``_recovery`` (the start-up read in
batches), ``_queue_view`` and ``_operations`` (what ``hatwist queue`` reads and
does: list, show, flush, hold, release, delete, bounce) and ``_service`` (the
:class:`Scheduler`: the glue).
"""

from ._ledger import SAVE_RETRY_DELAY
from ._outcome import domain_of
from ._recovery import RECOVERY_BATCH
from ._service import COUNTERS, MAX_IN_FLIGHT, Scheduler
from ._states import (
    ACTIVE,
    BACKOFF,
    HELD,
    PAUSED,
    QUEUE_STATES,
    THROTTLED,
    WAITING_FOR_PROXY,
    QueueState,
)
from ._waits import THROTTLE_RECHECK

# Logs (Logger namespace) and reprs name the public home.
QueueState.__module__ = Scheduler.__module__ = __name__

__all__ = [
    "ACTIVE",
    "BACKOFF",
    "COUNTERS",
    "HELD",
    "MAX_IN_FLIGHT",
    "PAUSED",
    "QUEUE_STATES",
    "RECOVERY_BATCH",
    "SAVE_RETRY_DELAY",
    "THROTTLED",
    "THROTTLE_RECHECK",
    "WAITING_FOR_PROXY",
    "QueueState",
    "Scheduler",
    "domain_of",
]
