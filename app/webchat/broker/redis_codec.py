"""Key names and payload encoding of the Redis broker. Pure: no I/O.

Every key of a room carries the room in a hash tag (`wc:{lobby}:h`), so a room's keys live in
one slot and each Lua script touches one slot, as Redis Cluster requires.

| key / channel                       | type   | holds                                 | expires  |
|-------------------------------------|--------|---------------------------------------|----------|
| `wc:{room}:h`                       | stream | history; entry id = message id        | room (1) |
| `wc:{room}:c`                       | pubsub | live messages and presence events     | -        |
| `wc:{room}:n:<len>:<sender><nonce>` | string | a deduped send: its message id (2)    | 5 min    |
| `wc:{room}:p`                       | hash   | name -> how many nodes hold it        | pres (3) |
| `wc:{room}:e`                       | zset   | `<node>:<name>` by expiry (ms)        | pres (3) |
| `wc:{room}:ps`                      | stream | the last ~1000 presence events        | pres (3) |
| `wc:{room}:k`                       | hash   | name -> its holder (key's SHA-256)    | pres (3) |
| `wc:{room}:w`                       | string | a write for WAIT to confirm (5)       | 10 s     |
| `wc:node:<node>`                    | pubsub | this node's self-ping                 | -        |
| `wc:node:<node>:w`                  | string | this node's write probe               | 10 s     |
| `wc:node:<node>:<k>`                | pubsub | on a cluster: one shard link's ping   | -        |
| `wc:{#index}:members`               | zset   | room -> names present (/api/rooms)    | pruned   |
| `wc:{#index}:seen`                  | zset   | room -> when a live node confirmed it | pruned   |
| `wc:{#index}:active`                | zset   | room -> ts of its last message        | 24 h (4) |

(1) `--room-ttl` after its last message; every node with members in the room pushes it back.
(2) sender: the name, or `\x1f<sub>` in authenticated mode (Draft.sender). Or, once the
stream trimmed it within the dedupe window, the whole message (see redis_scripts.PUBLISH).
The window is 5 minutes, or the room TTL if that is shorter.
(3) 3 presence timeouts after the last refresh of a node holding a name there; empty hashes
and sets go at once, the presence stream of an emptied room a few seconds after its last leave.
(4) entries older than 24 hours, or the room TTL if shorter.
(5) `--redis-replicas-ack`: written before a WAIT that confirms everything before it.

The index keys share one hash tag that no room name can have (`#`), so the index is one
slot and never collides with a room's keys.

Stream entries have fields `n` (name), `t` (text), optionally `o` (nonce), `x` (trace
context as JSON) and `u` (the sender's `sub`, authenticated mode); `ts` is the entry id's
millisecond part. Channel payloads are JSON objects written by cjson in Lua:
`{"k":"m","i":id,"n":..,"t":..,"o":..,"x":..,"u":..,"a":..}` for a message
(`a`: Redis's `TIME` at acceptance in microseconds, as a string of digits) and
`{"k":"p","i":id,"e":"join"|"leave","n":name,"c":count}` for presence, `i` being the id of
the event in the presence stream (fields `e`, `n`, `c`).

With `--redis-replicas-ack N` a message's payload also has `"w":N`: subscribers hold it until
`{"k":"c","i":id}` (a commit: every message up to `id` is on N replicas) or their own WAIT
confirms it, so no client sees a message a failover could still take back. On a Redis Cluster
every channel is a shard channel (SPUBLISH/SSUBSCRIBE), in its room's slot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from webchat.broker.base import Message, PresenceEvent

PREFIX: Final = "wc"

# Stream ids are two unsigned 64-bit integers.
MAX_ID_PART: Final = 2**64 - 1

_HEAD: Final = f"{PREFIX}:{{".encode()
_TAIL: Final = b"}:c"


def describe(exc: BaseException) -> str:
    """An exception for a log line: its type and text (redis-py's repr hides the text)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def stream_key(room: str) -> str:
    return f"{PREFIX}:{{{room}}}:h"


def channel(room: str) -> str:
    return f"{PREFIX}:{{{room}}}:c"


def dedupe_key(room: str, name: str, nonce: str) -> str:
    # The name's length makes the key unambiguous: ("a:b", "c") and ("a", "b:c") differ.
    return f"{PREFIX}:{{{room}}}:n:{len(name)}:{name}{nonce}"


def presence_keys(room: str) -> list[str]:
    """The names hash, holders zset, presence stream and name holders hash of `room`, as the
    Lua scripts take them."""
    return [
        f"{PREFIX}:{{{room}}}:p",
        f"{PREFIX}:{{{room}}}:e",
        presence_stream_key(room),
        f"{PREFIX}:{{{room}}}:k",
    ]


def index_keys() -> list[str]:
    """The room index: member counts, when they were confirmed, last message times."""
    return [f"{PREFIX}:{{#index}}:{part}" for part in ("members", "seen", "active")]


def barrier_key(room: str) -> str:
    return f"{PREFIX}:{{{room}}}:w"


def presence_stream_key(room: str) -> str:
    return f"{PREFIX}:{{{room}}}:ps"


def node_channel(node_id: str) -> str:
    return f"{PREFIX}:node:{node_id}"


def probe_key(node_id: str) -> str:
    """The key this node writes to learn whether Redis accepts writes (OOM, replica, MISCONF)."""
    return f"{PREFIX}:node:{node_id}:w"


def room_of_channel(name: bytes) -> str | None:
    """The room whose channel is `name`, or None for any other channel."""
    if name.startswith(_HEAD) and name.endswith(_TAIL):
        return name[len(_HEAD) : -len(_TAIL)].decode()
    return None


def id_key(message_id: str) -> tuple[int, int]:
    """Order key of a well-formed stream id (as Redis writes them)."""
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq)


def _trace(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    value = json.loads(raw)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def _micros(raw: Any) -> int | None:
    """The acceptance time `a`; None when absent (an older version's payload) or malformed:
    a message is never dropped for its timing."""
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def encode_trace(trace: dict[str, str] | None) -> str:
    return json.dumps(trace, separators=(",", ":")) if trace else ""


@dataclass(frozen=True, slots=True)
class Pending:
    """A message published with `--redis-replicas-ack`: delivered once `replicas` replicas
    have it (a commit covers it, or a WAIT of the subscriber's own confirms it)."""

    message: Message
    replicas: int


@dataclass(frozen=True, slots=True)
class Committed:
    """Every message of the room up to `id` is on the replicas its publisher asked for."""

    id: str


def encode_commit(message_id: str) -> str:
    return json.dumps({"k": "c", "i": message_id}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Announced:
    """A presence event and its id in the room's presence stream."""

    id: str
    event: PresenceEvent


def decode_event(room: str, payload: bytes) -> Message | Pending | Announced | Committed:
    """A channel payload as the broker's value; raises ValueError/KeyError if malformed."""
    data = json.loads(payload)
    kind = data["k"]
    if kind == "m":
        message_id = str(data["i"])
        message = Message(
            message_id,
            room,
            data["n"],
            data["t"],
            id_key(message_id)[0],
            data.get("o"),
            _trace(data.get("x")),
            accepted_us=_micros(data.get("a")),
            user=data.get("u"),
        )
        replicas = data.get("w")
        return Pending(message, int(replicas)) if replicas else message
    if kind == "c":
        return Committed(str(data["i"]))
    if kind == "p":
        return Announced(str(data["i"]), PresenceEvent(room, data["e"], data["n"], int(data["c"])))
    raise ValueError(f"unknown event kind {kind!r}")


def presence_from_entry(room: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Announced:
    """A presence stream entry (as XRANGE returns it)."""
    event = PresenceEvent(room, fields[b"e"].decode(), fields[b"n"].decode(), int(fields[b"c"]))
    return Announced(entry_id.decode(), event)


def decode_message(room: str, payload: bytes) -> Message:
    event = decode_event(room, payload)
    if isinstance(event, Pending):
        return event.message
    if not isinstance(event, Message):
        raise ValueError("expected a message payload")
    return event


def message_from_entry(room: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Message:
    """A stream entry (as XRANGE returns it) as a Message."""
    message_id = entry_id.decode()
    nonce = fields.get(b"o")
    trace = fields.get(b"x")
    user = fields.get(b"u")
    return Message(
        message_id,
        room,
        fields[b"n"].decode(),
        fields[b"t"].decode(),
        id_key(message_id)[0],
        nonce.decode() if nonce is not None else None,
        _trace(trace),
        user=user.decode() if user is not None else None,
    )


def end_before(before: tuple[int, int]) -> str | None:
    """The XREVRANGE end of the entries before `before`; None if no stream id precedes it."""
    ms, seq = before
    if ms > MAX_ID_PART:
        return "+"
    if seq > MAX_ID_PART:
        return f"{ms}-{MAX_ID_PART}"
    if (ms, seq) == (0, 0):
        return None
    return f"({ms}-{seq}"


def start_after(after: tuple[int, int]) -> str | None:
    """The XRANGE start of the entries after `after`; None if no stream id can follow it."""
    ms, seq = after
    if seq < MAX_ID_PART:
        return f"({ms}-{seq}" if ms <= MAX_ID_PART else None
    # Stream ids are two unsigned 64-bit integers, and `since` may exceed them.
    return f"{ms + 1}-0" if ms < MAX_ID_PART else None
