"""A webchat server that loses one delivery on purpose: proof that the load tests count loss.

    python -m tests.support.lossy_webchat [webchat options]

Test-only: it patches `Hub.on_messages` in its own process, then runs the real `webchat`
command line. The LOSSY_NTH-th message the hub fans out (default 20) is not written to one of
its recipients (the first connection of the room that is not its sender); everything else is
delivered as usual, and the message is accepted and stored as usual. The product has no such
switch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from webchat.broker.base import Message
from webchat.cli import main
from webchat.hub import Hub

NTH = int(os.environ.get("LOSSY_NTH", "20"))
_deliver = Hub.on_messages
_seen = 0


def on_messages(self: Hub, room_name: str, messages: Sequence[Message]) -> None:
    global _seen
    room = self._rooms.get(room_name)
    if room is None or not room.conns or not _seen < NTH <= _seen + len(messages):
        _seen += len(messages)
        _deliver(self, room_name, messages)
        return
    k = NTH - _seen - 1
    _seen += len(messages)
    if k:
        _deliver(self, room_name, messages[:k])
    victim = next((c for c in room.conns if c.name != messages[k].name), None)
    if victim is not None:
        del room.conns[victim]  # only for this one message
    try:
        _deliver(self, room_name, messages[k : k + 1])
    finally:
        if victim is not None:
            room.conns[victim] = None
    if messages[k + 1 :]:
        _deliver(self, room_name, messages[k + 1 :])
    print(f"lossy_webchat: dropped message {messages[k].id} for {victim and victim.name}")


Hub.on_messages = on_messages  # type: ignore[method-assign]  # the fault under test

if __name__ == "__main__":
    sys.exit(main())
