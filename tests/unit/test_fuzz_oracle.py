"""The fuzzer's oracle says what PROTOCOL.md and RFC 6455 say (tests/fuzz/oracle.py)."""

from __future__ import annotations

import json

import pytest

from tests.fuzz import oracle
from tests.fuzz.oracle import Close, Echo, Either, Error, Http, Pong


def message(**fields: object) -> bytes:
    return json.dumps({"type": "message", **fields}).encode()


@pytest.mark.parametrize(
    ("payload", "answer"),
    [
        (message(text=" hi\u3000"), Echo("hi", None, False)),
        (message(text="hi", nonce=""), Echo("hi", "", True)),
        (message(text="x" * 2000), Echo("x" * 2000, None, False)),
        (message(text="x" * 2001), Error("bad_message")),
        (message(text="\u200b\u2060"), Error("bad_message")),
        (message(text="\u3000 "), Error("bad_message")),
        (message(text="hi", nonce=None), Error("bad_message")),
        (message(text="hi", nonce="n" * 65), Error("bad_message")),
        (b'{"type": "message", "text": "\\ud800"}', Error("bad_message")),
        (b'{"type": "Message", "text": "hi"}', Error("bad_type")),
        (b'{"text": "hi"}', Error("bad_type")),
        (b'{"type": "refresh", "token": "t"}', Error("bad_type")),  # anonymous mode
        (b'{"type": "refresh", "token": ""}', Error("bad_message")),
        (b'{"type": "refresh"}', Error("bad_message")),
        (b'["message"]', Error("bad_json")),
        (b'{"type": "message", "text": "hi", "n": NaN}', Error("bad_json")),
        (b"", Error("bad_json")),
        (b'{"type": "message", "text": "a", "text": "b"}', Echo("b", None, False)),
        (b'{"type": "message", "text": "\xff"}', Close(frozenset({1007}))),
        (b" " * 16385, Close(frozenset({1009}))),
    ],
)
def test_message_answers(payload, answer):
    got = oracle.message_answer(payload)
    if isinstance(answer, Close):
        assert isinstance(got, Close) and got.codes == answer.codes
    else:
        assert got == answer


def test_control_frames():
    assert oracle.ping_answer(b"x" * 125) == Pong(b"x" * 125)
    assert isinstance(oracle.ping_answer(b"x" * 126), Close)
    assert oracle.close_answer(b"").codes == {1000, 1005}
    assert oracle.close_answer(b"\x03").codes == {1002}
    assert oracle.close_answer(b"\x0f\xa0bye").codes == {1000, 4000}
    assert oracle.close_answer(b"\x03\xed").codes == {1002}  # 1005 is never sent
    assert oracle.close_answer(b"\x03\xe8\xff").codes == {1007}
    assert isinstance(oracle.close_answer(b"\x13\x88"), Either)  # 5000: undefined


def test_connect_answers():
    host = {"Host": "127.0.0.1:8080"}
    upgrade = {
        **host,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    held = [oracle.Held("r", "alice", "alicealicealice0")]
    assert oracle.connect_answer("GET", "room=r&name=bob", host, held).statuses == {426}
    assert oracle.connect_answer("GET", "room=r&name=bob", upgrade, held).statuses == {101}
    assert oracle.connect_answer("GET", "room=r&name=+alice", upgrade, held) == Http(
        frozenset({409}), "name_taken", "name held by another key"
    )
    assert oracle.connect_answer("GET", "room=r!&name=bob", upgrade, held).statuses == {400}
    foreign = {**upgrade, "Origin": "http://evil.example"}
    assert oracle.connect_answer("GET", "room=r", foreign, held).statuses == {403}
    same = {**upgrade, "Origin": "https://127.0.0.1:8080"}
    assert oracle.connect_answer("GET", "room=r", same, held).statuses == {101}
    old = {**upgrade, "Sec-WebSocket-Version": "12"}
    assert oracle.connect_answer("GET", "room=r", old, held).statuses == {426}
    assert oracle.connect_answer("HEAD", "room=r", upgrade, held).statuses == {400}
    assert oracle.query_params("name=a+b&name=c&x=%FF") == {"name": "a b", "x": "\ufffd"}
