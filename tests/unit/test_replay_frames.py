"""Replayed messages' frames, encoded once per process (replay.MessageFrames)."""

from __future__ import annotations

from webchat.broker.base import Message
from webchat.protocol import encode_message, ws_text_frame
from webchat.replay import FRAMES_KEPT, MessageFrames


def _message(i: int, room: str = "r") -> Message:
    return Message(f"{1000 + i}-0", room, "amy", f"text {i}", 1000 + i, None)


def test_a_message_is_encoded_once_and_framed_as_a_live_one() -> None:
    frames = MessageFrames()
    first = frames(_message(1))
    assert first == ws_text_frame(encode_message(_message(1)))
    assert frames(_message(1)) is first  # the same bytes for every client replaying it
    other = frames(_message(1, room="s"))  # ids are per room
    assert other is not first and b'"room":"s"' in other


def test_past_its_bound_it_starts_again_and_stays_right() -> None:
    frames = MessageFrames()
    kept = frames(_message(0))
    for i in range(1, FRAMES_KEPT + 1):
        frames(_message(i))
    again = frames(_message(0))
    assert again == kept and again is not kept  # forgotten, encoded again
    assert frames(_message(FRAMES_KEPT)) == ws_text_frame(encode_message(_message(FRAMES_KEPT)))


def test_an_id_seen_again_with_other_content_is_encoded_anew() -> None:
    frames = MessageFrames()
    frames(_message(1))
    other = Message("1001-0", "r", "bo", "another text", 1001, None)
    assert frames(other) == ws_text_frame(encode_message(other))
