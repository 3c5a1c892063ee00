"""websocket.Parsers: a websockets protocol is lent for a read, and given back only when it
holds nothing of its connection's (between frames, no fragmented message, no close)."""

from __future__ import annotations

from tests.support.rawws import OP_CLOSE, OP_PING, OP_TEXT, encode_client_frame
from webchat.websocket import SPARES, Parsers


def test_a_protocol_between_frames_is_given_back_and_lent_again():
    parsers = Parsers(1024)
    ws = parsers.take()
    ws.receive_data(encode_client_frame(OP_TEXT, b"hello") + encode_client_frame(OP_PING, b""))
    assert len(ws.events_received()) == 2
    assert parsers.give(ws)
    assert parsers.take() is ws
    assert parsers.take() is not ws  # lent once at a time


def test_a_protocol_with_half_a_frame_stays_with_its_socket():
    parsers = Parsers(1024)
    frame = encode_client_frame(OP_TEXT, b"hello")
    for cut in (1, 2, 4, 6, len(frame) - 1):  # in the head, in the mask, in the payload
        ws = parsers.take()
        ws.receive_data(frame[:cut])
        assert ws.events_received() == []
        assert not parsers.give(ws), cut
        ws.receive_data(frame[cut:])
        assert [event.data for event in ws.events_received()] == [b"hello"]  # type: ignore[union-attr]
        assert parsers.give(ws), cut


def test_a_protocol_in_a_fragmented_message_stays_with_its_socket():
    parsers = Parsers(1024)
    ws = parsers.take()
    ws.receive_data(encode_client_frame(OP_TEXT, b"hel", fin=False))
    ws.events_received()
    assert not parsers.give(ws)
    ws.receive_data(encode_client_frame(0x0, b"lo"))
    ws.events_received()
    assert parsers.give(ws)


def test_a_closing_or_unsent_protocol_stays_with_its_socket():
    parsers = Parsers(1024)
    ws = parsers.take()
    ws.receive_data(encode_client_frame(OP_TEXT, b"x"))
    assert not parsers.give(ws)  # its events are not handed over yet
    ws.events_received()
    ws.send_ping(b"")
    assert not parsers.give(ws)  # something to send
    ws.data_to_send()
    ws.receive_data(encode_client_frame(OP_CLOSE, b"\x03\xe8"))
    ws.events_received()
    ws.data_to_send()
    assert not parsers.give(ws)  # closing


def test_no_more_than_a_few_spares_are_kept():
    parsers = Parsers(1024)
    lent = [parsers.take() for _ in range(SPARES + 3)]
    assert all(parsers.give(ws) for ws in lent)
    assert parsers.spare == tuple(lent[:SPARES])
    let_go = lent[SPARES:]
    assert all(ws.parser.gi_frame is None for ws in let_go)  # closed: their cycle is broken
