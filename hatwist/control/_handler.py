# -*- test-case-name: tests.control.test_server -*-
"""
What each control request does to the running scheduler, and the answer's lines.

The scheduler's public face (``list_messages``, ``show_message``,
``flush_queues``, ``stream_action``) does the work; this module only maps a
checked :class:`~hatwist.control._protocol.Request` onto it and shapes the
answer.  ``list`` writes its rows as they are read, one line each; an action
writes one ``{"result": [id, outcome]}`` line per message as each slice is done
(paced by the client, see ``_answer``) and ends with the counts.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from ._answer import Answer
from ._protocol import Request, encode


class QueueHandler:
    """:param scheduler: the running :class:`hatwist.scheduler.Scheduler`."""

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler

    def handle(self, request: Request, uid: int | None, write: Answer
               ) -> dict[str, Any] | defer.Deferred[dict[str, Any]]:
        scheduler, command = self._scheduler, request.command
        if command == "list":
            d = scheduler.list_messages(binding=request.binding, domain=request.domain,
                                        state=request.state, limit=request.limit)
            return d.addCallback(self._listed, request, write)
        if command == "show":
            [message_id] = request.ids
            shown = scheduler.show_message(message_id)
            if shown is None:
                return {"ok": False, "error": f"message {message_id} is not in the queue"}
            return {"ok": True, "message": shown}
        if command == "flush":
            queues, messages = scheduler.flush_queues(binding=request.binding,
                                                      domain=request.domain, uid=uid)
            return {"ok": True, "queues": queues, "messages": messages}

        def report(outcomes: list[tuple[str, str]]) -> defer.Deferred[bool]:
            for message_id, outcome in outcomes:
                write(encode({"result": [message_id, outcome]}))
            return write.ready()

        d = scheduler.stream_action(command, request.ids, binding=request.binding,
                                    domain=request.domain, state=request.state, uid=uid,
                                    report=report)
        return d.addCallback(lambda summary: {
            "ok": True, "matched": summary.matched, "counts": summary.counts})

    @staticmethod
    def _listed(listing: Any, request: Request, write: Answer) -> defer.Deferred[dict]:
        return defer.ensureDeferred(_write_rows(listing, request, write))


#: Rows of a list written per reactor turn (JSON-encoding 100,000 rows in one turn
#: stopped the relay 0.8 s at a million queued; bench_queue.py).
ROWS_PER_TURN = 2_000


async def _write_rows(listing: Any, request: Request, write: Answer) -> dict[str, Any]:
    rows = listing.rows
    for start in range(0, len(rows), ROWS_PER_TURN):
        if start and not await write.next_turn():
            break  # the client went away: nobody reads the rest
        for row in rows[start:start + ROWS_PER_TURN]:
            write(encode({"message": row}))
    return {"ok": True, "total": listing.total, "shown": len(rows), "limit": request.limit}
