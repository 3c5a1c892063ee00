"""protocol.py: connection parameters, client frames, server frames, WebSocket framing.

Pure functions, so no sockets and no event loop; each case names the PROTOCOL.md rule it checks.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

import pytest

from webchat.broker.base import Message
from webchat.protocol import (
    GAP,
    MAX_NAME,
    MAX_NONCE,
    NO_KEY,
    WHITE_SPACE,
    ConnectParams,
    ProtocolError,
    encode_error,
    encode_message,
    encode_presence,
    encode_welcome,
    error_body,
    key_holder,
    member_name,
    member_user,
    message_dict,
    parse_client_frame,
    parse_connect_params,
    parse_id,
    parse_limit,
    validate_name,
    validate_room,
    ws_text_frame,
)

# Unicode White_Space, from PropList.txt: what `text` and `name` are trimmed of.
UNICODE_WHITE_SPACE = [
    *range(0x09, 0x0E),
    *(0x20, 0x85, 0xA0, 0x1680),
    *range(0x2000, 0x200B),
    *(0x2028, 0x2029, 0x202F, 0x205F, 0x3000),
]


def bad(code: str, call, *args):  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError) as info:
        call(*args)
    assert info.value.code == code, info.value.message
    assert info.value.message and "\n" not in info.value.message
    return info.value


def frame(**fields: object) -> str:
    return json.dumps({"type": "message", **fields})


# --- White_Space ---------------------------------------------------------------------------


def test_white_space_is_exactly_unicode_white_space():
    assert sorted(map(ord, WHITE_SPACE)) == UNICODE_WHITE_SPACE
    # str.isspace() agrees except for the information separators U+001C..U+001F.
    spaces = {c for c in range(0x110000) if chr(c).isspace()}
    assert spaces - set(UNICODE_WHITE_SPACE) == {0x1C, 0x1D, 0x1E, 0x1F}


# --- room ----------------------------------------------------------------------------------


@pytest.mark.parametrize("room", ["lobby", "a", "A-Z_0-9", "-", "_", "x" * 64, "Room-42_b"])
def test_valid_rooms(room):
    assert validate_room(room) == room


@pytest.mark.parametrize(
    "room",
    ["", "x" * 65, "a b", "a.b", "a/b", "é", "lobby\n", "\nlobby", " lobby", "a%20b", "\uff4cobby"],
)
def test_invalid_rooms(room):
    bad("bad_request", validate_room, room)


# --- name ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("alice", "alice"),
        ("  alice\t", "alice"),
        ("\u3000alice\u00a0", "alice"),
        ("\u2028\u205f a b \u202f\u0085", "a b"),
        ("x" * MAX_NAME, "x" * MAX_NAME),
        (" " + "x" * MAX_NAME + " ", "x" * MAX_NAME),  # counted after trimming
        ("😀" * MAX_NAME, "😀" * MAX_NAME),  # characters, not bytes
        ("é", "é"),
        ("\u05e9\u05dc\u05d5\u05dd", "\u05e9\u05dc\u05d5\u05dd"),  # right to left
        ("e\u0301", "e\u0301"),  # a combining mark (Mn) is not a format character
    ],
)
def test_valid_names_are_trimmed(raw, name):
    assert validate_name(raw) == name


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "\u3000\u00a0\t",
        "x" * (MAX_NAME + 1),
        "😀" * (MAX_NAME + 1),
        "a\x00b",
        "a\x07b",
        "a\x1bb",
        "a\x7fb",
        "a\x85b",  # NEL is White_Space and a control: trimmed at the ends, refused inside
        "a\x9fb",
        "\x1calice",  # not White_Space, so not trimmed: a control character
        "a\nb",
        # 1.1: no format characters (Cf): invisible, so "al\u200bice" would pass for "alice".
        "\u200b",
        "\u200b\u200c\u200d\u2060\ufeff",
        "\u200balice",  # ZERO WIDTH SPACE is not White_Space: not trimmed, refused
        "al\u200bice",
        "alice\u2060",
        "\u202eecila",  # RIGHT-TO-LEFT OVERRIDE
        "a\U000e0041",  # a TAG character
    ],
)
def test_invalid_names(raw):
    bad("bad_request", validate_name, raw)


# --- connection parameters -----------------------------------------------------------------


def test_connect_defaults():
    params = parse_connect_params({})
    assert params.room == "lobby"
    assert re.fullmatch(r"guest-[0-9a-f]{4}", params.name)
    assert params.since is None


def test_default_names_are_random():
    names = {parse_connect_params({}).name for _ in range(50)}
    assert len(names) > 40


def test_connect_params_given():
    params = parse_connect_params({"room": "r1", "name": " bob ", "since": "1732650000000-7"})
    assert params == ConnectParams("r1", "bob", "1732650000000-7")
    assert (params.history, params.holder) == (0, NO_KEY)


@pytest.mark.parametrize(("raw", "history"), [("0", 0), ("1", 1), ("50", 50), ("500", 500)])
def test_history(raw, history):
    assert parse_connect_params({"history": raw}).history == history


def test_history_is_ignored_with_since():
    params = parse_connect_params({"history": "50", "since": "1-0"})
    assert (params.since, params.history) == ("1-0", 0)


KEY = "k" * 16


def test_key_is_kept_only_as_a_hash():
    key = "Zm9vYmFy_-0123456789abcdefABCDEF"
    params = parse_connect_params({"key": key})
    assert params.holder == hashlib.sha256(key.encode()).hexdigest() == key_holder(key)
    assert key not in repr(params)
    assert key_holder(None) == NO_KEY != key_holder(KEY)
    assert key_holder(KEY) != key_holder(KEY + "x")
    assert parse_connect_params({"key": "a" * 128}).holder == key_holder("a" * 128)


@pytest.mark.parametrize(
    "query",
    [
        {"room": ""},
        {"room": "a b"},
        {"room": "x" * 65},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 33},
        {"name": "a\x01"},
        {"since": ""},
        {"since": "123"},
        {"since": "1-2-3"},
        {"since": "a-b"},
        {"since": "-1"},
        {"since": "1-"},
        {"since": " 1-2"},
        {"since": "1-2\n"},
        {"since": "1" * 21 + "-0"},
        {"since": "0-" + "1" * 21},
        {"since": "\u0661-\u0662"},  # Arabic-Indic digits are not [0-9]
        {"history": ""},
        {"history": "-1"},
        {"history": "501"},
        {"history": "1.5"},
        {"history": " 5"},
        {"history": "\u0665"},
        {"history": "9" * 5000},
        {"history": "abc", "since": "1-0"},  # validated even when since makes it irrelevant
        {"key": ""},
        {"key": "k" * 15},
        {"key": "k" * 129},
        {"key": "k" * 15 + "="},
        {"key": "k" * 15 + " "},
        {"key": "k" * 15 + "\u00e9"},
    ],
)
def test_bad_connect_params(query):
    error = bad("bad_request", parse_connect_params, query)
    if query.get("key"):
        assert query["key"] not in error.message  # a secret is never echoed


@pytest.mark.parametrize("since", ["0-0", "1-0", "1732650000000-0", "9" * 20 + "-" + "9" * 20])
def test_valid_since(since):
    assert parse_connect_params({"since": since}).since == since


# --- ids -----------------------------------------------------------------------------------


def test_a_bad_id_names_its_parameter():
    assert "before must look like" in bad("bad_request", parse_id, "x", "before").message
    assert "since must look like" in bad("bad_request", parse_id, "x").message


def test_ids_order_as_two_integers():
    ids = ["9-0", "10-0", "10-2", "10-10", "11-1", "100-0"]
    assert sorted(ids, key=parse_id) == ids
    assert parse_id("1732650000000-3") == (1732650000000, 3)
    assert parse_id("00010-01") == (10, 1)


# --- limit ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "limit"), [(None, 100), ("1", 1), ("500", 500), ("007", 7)])
def test_limit(raw, limit):
    assert parse_limit(raw) == limit


@pytest.mark.parametrize(
    "raw",
    ["0", "501", "-1", "+5", "1.5", "1e2", "abc", "", " 5", "5 ", "\u00b2", "\u0663", "1" * 5000],
)
def test_bad_limit(raw):
    bad("bad_request", parse_limit, raw)


# --- client frames -------------------------------------------------------------------------


def test_message_frame():
    request = parse_client_frame(frame(text="hello", nonce="c-42"), 2000)
    assert (request.text, request.nonce) == ("hello", "c-42")


def test_nonce_is_optional():
    assert parse_client_frame(frame(text="hi"), 2000).nonce is None


def test_bytes_are_accepted_as_utf8():
    assert parse_client_frame(frame(text="é").encode(), 2000).text == "é"


def test_unknown_fields_are_ignored():
    assert parse_client_frame(frame(text="hi", extra={"a": 1}), 2000).text == "hi"
    # Numbers of any size are JSON (int() alone refuses more than 4300 digits).
    huge = '{"type": "message", "text": "hi", "n": ' + "9" * 5000 + ', "m": -' + "1" * 5000 + "}"
    assert parse_client_frame(huge, 2000).text == "hi"


def test_text_is_trimmed_of_white_space_only():
    spaces = "".join(map(chr, UNICODE_WHITE_SPACE))
    assert parse_client_frame(frame(text=f"{spaces} a \u3000 b{spaces}"), 10).text == "a \u3000 b"
    for keep in ("\u200b", "\ufeff", "\x1c", "\u180e", "_"):
        assert parse_client_frame(frame(text=f"{keep}x{keep}"), 10).text == f"{keep}x{keep}"


@pytest.mark.parametrize(
    "data",
    [
        "",
        "not json",
        "{",
        '{"type": "message", "text": "hi"',
        "[1, 2]",
        '"message"',
        "null",
        "42",
        "true",
        "NaN",
        '{"type": "message", "text": "hi", "n": NaN}',  # JSON has no NaN, Infinity
        '{"type": "message", "text": "hi", "n": -Infinity}',
        "[" * 5000,  # deeper than the parser's recursion limit
        "[" * 5000 + "]" * 5000,
        '{"type": "message", "text": ' + "[" * 5000 + "]" * 5000 + "}",
        b"\xff\xfe",
    ],
)
def test_bad_json(data):
    bad("bad_json", parse_client_frame, data, 2000)


@pytest.mark.parametrize(
    "data",
    [
        "{}",
        '{"text": "hi"}',
        '{"type": "Message", "text": "hi"}',
        '{"type": "welcome"}',
        '{"type": "presence"}',
        '{"type": null, "text": "hi"}',
        '{"type": 1, "text": "hi"}',
        '{"type": ["message"], "text": "hi"}',
        '{"type": ' + "[" * 900 + "]" * 900 + "}",
    ],
)
def test_bad_type(data):
    bad("bad_type", parse_client_frame, data, 2000)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"text": None},
        {"text": 42},
        {"text": ["hi"]},
        {"text": {"a": "b"}},
        {"text": ""},
        {"text": " \t\n"},
        {"text": "\u3000\u00a0\u2003"},
        {"text": "x" * 11},
        {"text": " " + "😀" * 11 + " "},
        {"text": "hi", "nonce": 1},
        {"text": "hi", "nonce": None},
        {"text": "hi", "nonce": ["n"]},
        {"text": "hi", "nonce": "n" * (MAX_NONCE + 1)},
        {"text": "hi", "nonce": "😀" * (MAX_NONCE + 1)},
        # 1.1: made only of format characters (after trimming White_Space).
        {"text": "\u200b"},
        {"text": " \u200b\u200c\u200d\u2060\ufeff\n"},
        {"text": "\U000e0041\U000e007f"},
    ],
)
def test_bad_message(fields):
    bad("bad_message", parse_client_frame, frame(**fields), 10)


@pytest.mark.parametrize("text", ["\u200bx", "\u200b \u200b", "\u200d\U0001f600", "x\u200f"])
def test_format_characters_among_others_are_kept(text):
    assert parse_client_frame(frame(text=text), 10).text == text


def test_every_format_character_alone_is_refused():
    every_cf = "".join(c for c in map(chr, range(0x110000)) if unicodedata.category(c) == "Cf")
    assert len(every_cf) > 150
    bad("bad_message", parse_client_frame, frame(text=every_cf), len(every_cf))
    for c in every_cf:
        bad("bad_request", validate_name, f"a{c}b")


def test_max_text_counts_code_points_after_trimming():
    assert parse_client_frame(frame(text="😀" * 2000), 2000).text == "😀" * 2000
    assert parse_client_frame(frame(text=" \u3000" + "x" * 2000 + "\n"), 2000).text == "x" * 2000
    bad("bad_message", parse_client_frame, frame(text="😀" * 2001), 2000)
    # A combining sequence is two code points.
    bad("bad_message", parse_client_frame, frame(text="e\u0301" * 1001), 2000)


def test_nonce_limits():
    assert parse_client_frame(frame(text="hi", nonce="n" * 64), 10).nonce == "n" * 64
    assert parse_client_frame(frame(text="hi", nonce="😀" * 64), 10).nonce == "😀" * 64
    assert parse_client_frame(frame(text="hi", nonce=""), 10).nonce == ""
    # echoed exactly: not trimmed
    assert parse_client_frame(frame(text="hi", nonce=" n "), 10).nonce == " n "


@pytest.mark.parametrize(
    "data",
    [
        '{"type": "message", "text": "a\\ud800b"}',
        '{"type": "message", "text": "\\udfff"}',
        '{"type": "message", "text": "hi", "nonce": "\\ud83d"}',
    ],
)
def test_lone_surrogates_are_bad_messages(data):
    # A lone surrogate cannot be encoded as UTF-8: stored, it could never be delivered.
    bad("bad_message", parse_client_frame, data, 2000)


def test_surrogate_pairs_are_characters():
    assert parse_client_frame('{"type": "message", "text": "\\ud83d\\ude00"}', 1).text == "😀"


# --- server frames -------------------------------------------------------------------------

MESSAGE = Message("1732650000000-0", "lobby", "alice", "héllo 😀", 1732650000000, "c-42")


def test_message_frame_fields():
    assert json.loads(encode_message(MESSAGE)) == {
        "type": "message",
        "id": "1732650000000-0",
        "room": "lobby",
        "name": "alice",
        "text": "héllo 😀",
        "ts": 1732650000000,
        "nonce": "c-42",
    }
    assert message_dict(MESSAGE) == json.loads(encode_message(MESSAGE))


def test_message_without_nonce_has_no_nonce_field():
    message = Message("1-0", "r", "bob", "hi", 1, None)
    assert "nonce" not in json.loads(encode_message(message))


def test_message_with_empty_nonce_echoes_it():
    message = Message("1-0", "r", "bob", "hi", 1, "")
    assert json.loads(encode_message(message))["nonce"] == ""


def test_frames_are_compact_utf8():
    data = encode_message(MESSAGE)
    assert isinstance(data, bytes)
    assert "héllo 😀".encode() in data  # not \\u escapes: fewer bytes per frame
    assert b", " not in data and b": " not in data


def test_trace_context_is_not_sent_to_clients():
    message = Message("1-0", "r", "bob", "hi", 1, None, trace={"traceparent": "00-abc"})
    assert "trace" not in json.loads(encode_message(message))


def test_welcome_frame():
    limits = {"max_text": 2000, "rate_per_s": 10, "burst": 20}
    assert json.loads(encode_welcome("lobby", "alice", ("alice", "bob"), 2, limits)) == {
        "type": "welcome",
        "room": "lobby",
        "name": "alice",
        "members": ["alice", "bob"],
        "member_count": 2,
        "limits": limits,
    }


@pytest.mark.parametrize(
    ("room", "member", "members", "limits"),
    [
        ("lobby", "alice", ("alice", "bob"), {"max_text": 2000, "rate_per_s": 10, "burst": 20}),
        ("r", 'a"\\b', ['a"\\b', "</script>", "é😀", "x\u2028y", "z\x7f"], {"rate_per_s": 0.5}),
        ("r", "solo", [], {}),
        ("r", "amy\x1fsub-1", ["amy\x1fsub-1", "bo\x1fsub-2"], {"burst": 2}),
        ("r", "amy", ["amy", "bo\x1fsub-2"], {}),
    ],
)
def test_welcome_is_the_json_of_its_fields(
    room: str, member: str, members: list[str], limits: dict[str, float]
) -> None:
    """The welcome put together from JSON pieces is byte for byte json.dumps of its fields."""
    frame: dict[str, object] = {
        "type": "welcome",
        "room": room,
        "name": member_name(member),
        "members": [member_name(m) for m in members],
        "member_count": len(members),
        "limits": limits,
    }
    if member_user(member) is not None:
        frame["user"] = member_user(member)
        frame["users"] = [member_user(m) or "" for m in members]
    expected = json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode()
    assert encode_welcome(room, member, members, len(members), limits) == expected


def test_presence_frame():
    for event in ("join", "leave"):
        assert json.loads(encode_presence("r", event, "bob")) == {
            "type": "presence",
            "room": "r",
            "event": event,
            "name": "bob",
        }


def test_error_frame_and_body():
    assert json.loads(encode_error("bad_json", "nope")) == {
        "type": "error",
        "code": "bad_json",
        "message": "nope",
    }
    assert error_body("bad_request", "why") == {"error": {"code": "bad_request", "message": "why"}}


def test_gap_frame():
    assert json.loads(GAP) == {"type": "gap"}


# --- WebSocket framing ---------------------------------------------------------------------


def decode_frame(data: bytes) -> tuple[int, bytes]:
    """Reference decoder (RFC 6455 5.2) for an unmasked server frame: (opcode, payload)."""
    fin_opcode, length = data[0], data[1]
    assert fin_opcode & 0x80, "FIN set"
    assert not length & 0x80, "server frames are not masked"
    offset = 2
    if length == 126:
        length, offset = int.from_bytes(data[2:4], "big"), 4
    elif length == 127:
        length, offset = int.from_bytes(data[2:10], "big"), 10
    payload = data[offset:]
    assert len(payload) == length
    return fin_opcode & 0x0F, payload


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x81\x00"),
        (1, b"\x81\x01"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (127, b"\x81\x7e\x00\x7f"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        (70000, b"\x81\x7f" + (70000).to_bytes(8, "big")),
    ],
)
def test_ws_text_frame_lengths(size, header):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    data = ws_text_frame(payload)
    assert data == header + payload
    assert decode_frame(data) == (0x1, payload)


def test_rooms_body():
    from webchat.broker.base import RoomInfo
    from webchat.protocol import encode_rooms

    body = encode_rooms([RoomInfo("lobby", 3, 1732650000000), RoomInfo("שלום", 1, None)])
    assert json.loads(body) == {
        "rooms": [
            {"room": "lobby", "member_count": 3, "last_ts": 1732650000000},
            {"room": "שלום", "member_count": 1, "last_ts": None},
        ]
    }
    assert json.loads(encode_rooms([])) == {"rooms": []}


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "keep-alive, Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.mark.parametrize(
    ("method", "changes", "status", "says"),
    [
        ("HEAD", {}, 400, "must be a GET"),
        ("GET", {"Upgrade": "h2c"}, 400, "Upgrade must be 'websocket'"),
        ("GET", {"Connection": "keep-alive"}, 400, "Connection must include 'Upgrade'"),
        ("GET", {"Sec-WebSocket-Version": "12"}, 426, "must be 13"),
        ("GET", {"Sec-WebSocket-Version": ""}, 426, "must be 13"),
        ("GET", {"Sec-WebSocket-Key": "c2hvcnQ="}, 400, "16 bytes"),
        ("GET", {"Sec-WebSocket-Key": "not base64 at all!"}, 400, "16 bytes"),
        ("GET", {"Sec-WebSocket-Key": ""}, 400, "16 bytes"),
        ("GET", {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25\xeaZQ=="}, 400, "16 bytes"),
    ],
)
def test_malformed_upgrades_say_what_is_wrong(method, changes, status, says):
    from webchat.protocol import upgrade_problem

    headers = {**UPGRADE, **changes}
    problem = upgrade_problem(method, headers)
    assert problem is not None and problem[0] == status and says in problem[1], problem
    assert "\n" not in problem[1]


def test_no_upgrade_header_is_no_upgrade_attempt():
    from webchat.protocol import upgrade_problem

    assert upgrade_problem("GET", {}) is None
    assert upgrade_problem("GET", UPGRADE) is None
    assert upgrade_problem("GET", {**UPGRADE, "Sec-WebSocket-Version": "8"}) is None
