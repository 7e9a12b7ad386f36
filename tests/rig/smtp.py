"""The rig's SMTP client is :mod:`hatwist.lab.smtp`, shipped for ``hatwist demo``
(tests: tests.rig.test_rig). Kept so ``tests.rig.smtp`` imports keep working."""

from hatwist.lab.smtp import Conversation, Reply, dot_stuff, send

__all__ = ["Conversation", "Reply", "dot_stuff", "send"]
