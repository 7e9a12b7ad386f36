# -*- test-case-name: tests.control.test_server -*-
"""
What each control request does to the running scheduler, and the answer's lines.

The scheduler's public face (``list_messages``, ``show_message``,
``flush_queues``, ``act_on_messages``) does the work; this module only maps a
checked :class:`~hatwist.control._protocol.Request` onto it and shapes the
answer.  ``list`` writes its rows as they are read, one line each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from ._protocol import Request, encode


class QueueHandler:
    """:param scheduler: the running :class:`hatwist.scheduler.Scheduler`."""

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler

    def handle(self, request: Request, uid: int | None, write: Callable[[bytes], None]
               ) -> dict[str, Any] | defer.Deferred[dict[str, Any]]:
        scheduler, command = self._scheduler, request.command
        if command == "list":
            listing = scheduler.list_messages(binding=request.binding, domain=request.domain,
                                              state=request.state, limit=request.limit)
            for row in listing.rows:
                write(encode({"message": row}))
            return {"ok": True, "total": listing.total, "shown": len(listing.rows),
                    "limit": request.limit}
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
        d = scheduler.act_on_messages(command, request.ids, binding=request.binding,
                                      domain=request.domain, state=request.state, uid=uid)
        return d.addCallback(lambda results: {
            "ok": True, "results": [[message_id, outcome] for message_id, outcome in results]})
