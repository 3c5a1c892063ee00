"""The Redis broker's pure parts: key names, payloads, id ranges, room state, backoff, errors."""

from __future__ import annotations

import json

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from webchat.broker.base import Message, PresenceEvent
from webchat.broker.redis import refuses_writes
from webchat.broker.redis_codec import (
    MAX_ID_PART,
    Announced,
    channel,
    decode_event,
    dedupe_key,
    end_before,
    index_keys,
    message_from_entry,
    presence_keys,
    room_of_channel,
    start_after,
    stream_key,
)
from webchat.broker.redis_rooms import BACKOFF_CAP, Cursor, Read, RoomSub, State, backoff_delay
from webchat.protocol import ROOM_RE


def test_a_rooms_keys_share_one_hash_tag():
    keys = [stream_key("lobby"), channel("lobby"), dedupe_key("lobby", "a", "n")]
    keys += presence_keys("lobby")
    assert all(key.startswith("wc:{lobby}:") for key in keys)
    assert len(set(keys)) == len(keys)


def test_the_room_index_is_one_slot_apart_from_every_room():
    keys = index_keys()
    assert all(key.startswith("wc:{#index}:") for key in keys) and len(set(keys)) == 3
    # '#' is never in a room name, so no room's keys share the index's hash tag.
    assert not ROOM_RE.fullmatch("#index")


def test_dedupe_keys_are_unambiguous():
    assert dedupe_key("r", "a:b", "c") != dedupe_key("r", "a", "b:c")
    assert dedupe_key("r", "ab", "") != dedupe_key("r", "a", "b")


def test_room_of_channel():
    assert room_of_channel(channel("my-room_1").encode()) == "my-room_1"
    assert room_of_channel(b"wc:node:abc") is None
    assert room_of_channel(stream_key("r").encode()) is None


def test_decode_message_and_presence_payloads():
    payload = {"k": "m", "i": "17-3", "n": "alice", "t": "hi", "o": "", "x": '{"a":"b"}'}
    assert decode_event("r", json.dumps(payload).encode()) == Message(
        "17-3", "r", "alice", "hi", 17, "", {"a": "b"}
    )
    bare = {"k": "m", "i": "17-4", "n": "alice", "t": "hi"}
    assert decode_event("r", json.dumps(bare).encode()) == Message(
        "17-4", "r", "alice", "hi", 17, None, None
    )
    presence = {"k": "p", "i": "18-0", "e": "leave", "n": "bob", "c": 3}
    assert decode_event("r", json.dumps(presence).encode()) == Announced(
        "18-0", PresenceEvent("r", "leave", "bob", 3)
    )
    with pytest.raises(ValueError, match="unknown event kind"):
        decode_event("r", b'{"k":"z"}')


def test_acceptance_time_in_microseconds_is_kept_and_never_fatal():
    timed = {"k": "m", "i": "17-0", "n": "a", "t": "hi", "a": "1732650000123456"}
    assert decode_event("r", json.dumps(timed).encode()).accepted_us == 1732650000123456
    for bad in ("soon", None, [1]):
        message = decode_event("r", json.dumps({**timed, "a": bad}).encode())
        assert isinstance(message, Message) and message.accepted_us is None
        assert message.text == "hi"


def test_message_from_a_stream_entry():
    entry = {b"n": "é".encode(), b"t": b"text", b"o": b"n1"}
    assert message_from_entry("r", b"5-0", entry) == Message("5-0", "r", "é", "text", 5, "n1")


def test_start_after_of_a_history_read():
    assert start_after((5, 2)) == "(5-2"
    assert start_after((5, MAX_ID_PART)) == "6-0"
    assert start_after((5, MAX_ID_PART + 7)) == "6-0"
    assert start_after((MAX_ID_PART, MAX_ID_PART)) is None
    assert start_after((MAX_ID_PART + 1, 0)) is None


def test_end_before_of_a_scroll_back_read():
    assert end_before((5, 2)) == "(5-2"
    assert end_before((5, 0)) == "(5-0"  # Redis steps back to 4-<max>
    assert end_before((0, 1)) == "(0-1"
    assert end_before((0, 0)) is None  # nothing precedes 0-0
    assert end_before((5, MAX_ID_PART + 1)) == f"5-{MAX_ID_PART}"  # past every seq of ms 5
    assert end_before((MAX_ID_PART + 1, 0)) == "+"  # past every stream id


def message(message_id: str) -> Message:
    return Message(message_id, "r", "a", "t", 0, None)


def announced(event_id: str, name: str = "bob") -> Announced:
    return Announced(event_id, PresenceEvent("r", "join", name, 1))


def test_a_cursor_moves_only_forward():
    cursor = Cursor("10-1")
    moved = [cursor.advance(i) for i in ("10-0", "10-1", "10-2", "9-9", "11-0")]
    assert moved == [False, False, True, False, True]
    assert cursor.last == "11-0"
    assert not cursor.behind("11-0") and not cursor.behind("12-0")
    assert cursor.behind("5-0") and cursor.behind(None)
    assert not Cursor("0-0").behind(None)


def test_a_backfill_hands_over_to_buffered_live_events():
    sub = RoomSub("10-0", "3-0")
    sub.state, sub.generation = State.BACKFILL, 2
    sub.buffer = [message("11-0"), announced("4-0"), message("12-0"), announced("3-0")]
    done = sub.backfilled(
        2,
        Read("11-0", "1-0", [message("10-5"), message("11-0")], complete=True),
        Read("4-0", "1-0", [announced("4-0")], complete=True),
    )
    assert [m.id for m in done.messages] == ["10-5", "11-0", "12-0"]
    assert done.presence == [announced("4-0").event]
    assert not done.again and not done.reset and not done.gap
    assert sub.state is State.LIVE and sub.buffer == []


def test_an_older_backfill_delivers_but_does_not_hand_over():
    sub = RoomSub("10-0", "0-0")
    sub.state, sub.generation = State.BACKFILL, 3
    sub.buffer = [message("13-0")]
    done = sub.backfilled(
        2, Read("11-0", "1-0", [message("11-0")], True), Read(None, None, [], True)
    )
    assert [m.id for m in done.messages] == ["11-0"]
    assert sub.state is State.BACKFILL and sub.buffer == [message("13-0")]
    partial = sub.backfilled(
        3, Read("13-0", "1-0", [message("12-0")], False), Read(None, None, [], True)
    )
    assert [m.id for m in partial.messages] == ["12-0"] and partial.again


def test_a_stream_behind_the_cursor_starts_over():
    sub = RoomSub("10-0", "5-0")
    sub.state, sub.generation = State.BACKFILL, 1
    done = sub.backfilled(1, Read(None, None, [], True), Read("5-0", "5-0", [], True))
    assert done.reset and done.again and done.messages == []
    assert sub.messages.last == "0-0" and sub.presence.last == "5-0"
    assert sub.state is State.BACKFILL


def test_history_trimmed_past_the_cursor_is_a_gap():
    sub = RoomSub("10-0", "0-0")
    sub.state, sub.generation = State.BACKFILL, 1
    # The cursor's own message is still held: nothing after it can have been trimmed.
    kept = sub.backfilled(
        1, Read("12-0", "10-0", [message("12-0")], True), Read(None, None, [], True)
    )
    assert not kept.gap
    # Now the oldest held message is newer than the cursor: some in between may be gone.
    sub.state, sub.generation = State.BACKFILL, 2
    trimmed = sub.backfilled(
        2,
        Read("30-0", "20-0", [message("20-0"), message("30-0")], True),
        Read(None, None, [], True),
    )
    assert trimmed.gap and [m.id for m in trimmed.messages] == ["20-0", "30-0"]
    # A room subscribed while its stream was empty has no cursor to fall off.
    fresh = RoomSub("0-0", "0-0")
    fresh.state, fresh.generation = State.BACKFILL, 1
    assert not fresh.backfilled(
        1, Read("5-0", "5-0", [message("5-0")], True), Read(None, None, [], True)
    ).gap


def test_backoff_is_capped_full_jitter():
    for attempt in range(40):
        delay = backoff_delay(attempt)
        assert 0 <= delay <= min(BACKOFF_CAP, 0.1 * 2**attempt)


@pytest.mark.parametrize(
    "error",
    [
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        ReadOnlyError("You can't write against a read only replica."),
        ResponseError("MISCONF Redis is configured to save RDB snapshots, but ..."),
        ResponseError("NOREPLICAS Not enough good replicas to write."),
        # Unmapped, a refusal keeps its code in front of the text.
        ResponseError("OOM command not allowed ... script: 1f0e, on @user_script:49."),
    ],
    ids=["oom", "readonly", "misconf", "noreplicas", "oom-unmapped"],
)
def test_write_refusals_are_told_apart(error):
    assert refuses_writes(error)


@pytest.mark.parametrize(
    "error",
    [
        ResponseError("ERR unknown command"),
        ResponseError("NOSCRIPT No matching script"),
        RedisConnectionError("No connection available."),
        RedisTimeoutError("Timeout reading from 127.0.0.1:6379"),
        ValueError("OOM in a message that is not Redis's"),
    ],
)
def test_other_errors_are_not_write_refusals(error):
    assert not refuses_writes(error)
