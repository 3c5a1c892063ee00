"""The wire frames of PROTOCOL.md: parse, validate, encode. Pure: no I/O, no event loop.

Server frames are encoded to bytes once here; the hub writes the same bytes to every recipient.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring
from typing import Any, Final

from webchat.broker.base import Message, RoomInfo

ROOM_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
ID_RE: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
LIMIT_RE: Final = re.compile(r"[0-9]{1,9}")
KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
# RFC 6455's version 13, and the drafts 7 and 8 with the same framing (aiohttp speaks them).
WS_VERSIONS: Final = ("13", "8", "7")
MAX_NAME: Final = 32
MAX_NONCE: Final = 64
MAX_HISTORY: Final = 500
DEFAULT_ROOM: Final = "lobby"
NO_KEY: Final = ""  # the holder of a name whose first connection gave no key
# Joins a display name and a user's `sub` into one presence member (authenticated mode). A
# unit separator: a control character, which no valid name holds, so the split is exact.
MEMBER_SEP: Final = "\x1f"

# Unicode White_Space (PropList.txt). str.strip() would also strip U+001C..U+001F, which are
# not White_Space, so the set is spelled out.
WHITE_SPACE: Final = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class ProtocolError(Exception):
    """A client input broke a rule; `code` is the PROTOCOL.md error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def bad_request(message: str) -> ProtocolError:
    return ProtocolError("bad_request", message)


# --- ids ---------------------------------------------------------------------------------


def parse_id(value: str, what: str = "since") -> tuple[int, int]:
    """Order key of a stream id `<ms>-<seq>`; raises ProtocolError if malformed.

    `what` names the parameter in the error message.
    """
    match = ID_RE.fullmatch(value)
    if not match:
        raise bad_request(
            f"{what} must look like <ms>-<seq> (e.g. 1732650000000-0), got {value[:80]!r}"
        )
    return int(match[1]), int(match[2])


# --- connection parameters ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectParams:
    """A valid `/ws` query. `holder` stands for who may use `name` in `room`: in anonymous
    mode a hash of the client's key (never the key itself, so it cannot leak into a log or
    a repr); in authenticated mode a hash of the token's `sub`, which is also `user`."""

    room: str
    name: str
    since: str | None
    history: int = 0
    holder: str = NO_KEY
    user: str | None = None  # the token's `sub` (authenticated mode), else None

    @property
    def member(self) -> str:
        return member_key(self.name, self.user)


# --- presence members --------------------------------------------------------------------


def member_key(name: str, user: str | None) -> str:
    """Who a connection is in presence: its name (anonymous mode), or its display name and
    its user's `sub` (authenticated mode).

    Presence counts members by this string. With the `sub` in it, two users of one display
    name are two members and one user's tabs are one; with the name first, members sort by
    the name shown. Presence itself treats it as opaque (broker/base.Presence).
    """
    return name if user is None else f"{name}{MEMBER_SEP}{user}"


def member_name(member: str) -> str:
    """The display name of a presence member."""
    return member.partition(MEMBER_SEP)[0]


def member_user(member: str) -> str | None:
    """The `sub` of a presence member, or None in anonymous mode."""
    _, sep, user = member.partition(MEMBER_SEP)
    return user if sep else None


def validate_room(room: str) -> str:
    if not ROOM_RE.fullmatch(room):
        raise bad_request(
            f"room must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-', got {room[:80]!r}"
        )
    return room


def validate_name(raw: str) -> str:
    name = raw.strip(WHITE_SPACE)
    if not name:
        raise bad_request("name must not be empty")
    if len(name) > MAX_NAME:
        raise bad_request(f"name must be at most {MAX_NAME} characters, got {len(name)}")
    if name.isascii() and name.isprintable():
        return name  # ASCII has no format character; printable, no control character either
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise bad_request("name must not contain control characters")
    # PROTOCOL.md 1.1: zero-width and other invisible format characters would let "alice"
    # and "al\u200bice" look alike while being two names held by two keys.
    if any(unicodedata.category(c) == "Cf" for c in name):
        raise bad_request("name must not contain invisible format characters (e.g. U+200B)")
    return name


def key_holder(key: str | None) -> str:
    """Who holds a name connected with `key`: a SHA-256 of the key, or NO_KEY.

    The key itself is a secret of the client; only this hash is kept and compared.
    """
    if key is None:
        return NO_KEY
    return hashlib.sha256(key.encode()).hexdigest()


def parse_history(raw: str) -> int:
    if not LIMIT_RE.fullmatch(raw) or int(raw) > MAX_HISTORY:
        raise bad_request(
            f"history must be a whole number from 0 to {MAX_HISTORY}, got {raw[:40]!r}"
        )
    return int(raw)


def parse_connect_params(query: Mapping[str, str], anonymous: bool = True) -> ConnectParams:
    """Validate the `/ws` query; raises ProtocolError('bad_request') before any upgrade.

    With `anonymous` False (authenticated mode) `name` and `key` are ignored, not checked:
    the caller puts the token's identity in (`with_identity`).
    """
    room = validate_room(query.get("room", DEFAULT_ROOM))
    raw_name = query.get("name") if anonymous else None
    name = validate_name(raw_name) if raw_name is not None else f"guest-{secrets.token_hex(2)}"
    since = query.get("since")
    if since is not None:
        parse_id(since)
    raw_history = query.get("history")
    # Validated even when `since` makes it irrelevant: a malformed parameter is a bad request.
    history = parse_history(raw_history) if raw_history is not None else 0
    key = query.get("key") if anonymous else None
    if key is not None and not KEY_RE.fullmatch(key):
        # The key is a secret: the message says what is wrong without repeating it.
        raise bad_request(
            f"key must be 16-128 characters of A-Z, a-z, 0-9, '_' or '-' ({len(key)} given)"
        )
    return ConnectParams(room, name, since, 0 if since is not None else history, key_holder(key))


def with_identity(params: ConnectParams, name: str, user: str) -> ConnectParams:
    """The parameters of an authenticated connection: the token's name and `sub`."""
    holder = hashlib.sha256(f"sub:{user}".encode()).hexdigest()
    return replace(params, name=name, user=user, holder=holder)


def parse_limit(raw: str | None, default: int = 100, maximum: int = 500) -> int:
    if raw is None:
        return default
    # ASCII digits only, and few of them: str.isdigit() accepts '²' (int() then fails) and
    # int() refuses more than 4300 digits, either of which would be a 500, not a 400.
    if not LIMIT_RE.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise bad_request(f"limit must be a whole number from 1 to {maximum}, got {raw[:40]!r}")
    return int(raw)


def upgrade_problem(method: str, headers: Mapping[str, str]) -> tuple[int, str] | None:
    """What is wrong with a request that asks for an `Upgrade` (RFC 6455 4.2.1), or None.

    For a request the WebSocket handshake refused: 426 if the version is not one spoken here
    (the caller names version 13 in `Sec-WebSocket-Version`), else 400. A request without an
    `Upgrade` header is no upgrade attempt at all (None).
    """
    upgrade = headers.get("Upgrade")
    if upgrade is None:
        return None
    if method != "GET":
        return 400, f"a WebSocket upgrade must be a GET, not {method[:20]!r}"
    if upgrade.strip().lower() != "websocket":
        return 400, f"Upgrade must be 'websocket', got {upgrade[:40]!r}"
    tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    if "upgrade" not in tokens:
        return 400, "Connection must include 'Upgrade' for a WebSocket upgrade"
    version = headers.get("Sec-WebSocket-Version", "")
    if version not in WS_VERSIONS:
        return 426, f"Sec-WebSocket-Version must be 13, got {version[:20]!r}"
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        valid = len(base64.b64decode(key)) == 16
    except ValueError:  # binascii.Error, or not ASCII
        valid = False
    if not valid:
        return 400, "Sec-WebSocket-Key must be 16 bytes in base64"
    return None


# --- client frames -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendRequest:
    text: str
    nonce: str | None


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """`{"type": "refresh", "token": ...}` (1.1, authenticated mode). No repr: a token."""

    token: str = field(repr=False)


def _encodable(value: str) -> bool:
    """False for a lone surrogate ("\\ud800" in JSON): it cannot be encoded as UTF-8, so a
    message holding one could be stored but never delivered."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "array" if isinstance(value, list) else "object"


def _not_json(constant: str) -> Any:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON (RFC 8259) has none."""
    raise ValueError(f"{constant} is not JSON")


def _any_int(digits: str) -> Any:
    """An integer of any length, as JSON allows; int() refuses more than 4300 digits, and a
    number is never used (only its type), so a huge one is read as a float, not refused."""
    return int(digits) if len(digits) <= 1000 else float(digits)


def parse_client_frame(data: str | bytes, max_text: int) -> SendRequest | RefreshRequest:
    """Parse one client text frame; raises ProtocolError with bad_json/bad_type/bad_message."""
    try:
        frame = json.loads(data, parse_constant=_not_json, parse_int=_any_int)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("bad_json", "frame is not valid JSON") from None
    except RecursionError:  # e.g. "[[[[...": nested deeper than the parser's recursion limit
        raise ProtocolError("bad_json", "frame is nested too deeply") from None
    if not isinstance(frame, dict):
        raise ProtocolError("bad_json", "frame must be a JSON object")
    kind = frame.get("type")
    if kind == "refresh":
        token = frame.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("bad_message", "refresh needs a token: a non-empty string")
        return RefreshRequest(token)
    if kind != "message":
        # Not json.dumps(kind): a deeply nested value would exceed the recursion limit again.
        shown = repr(kind[:40]) if isinstance(kind, str) else f"of JSON type {_json_type(kind)}"
        raise ProtocolError(
            "bad_type", f"unknown frame type {shown}; expected 'message' or 'refresh'"
        )
    text = frame.get("text")
    if not isinstance(text, str) or not _encodable(text):
        raise ProtocolError("bad_message", "text must be a string of Unicode characters")
    text = text.strip(WHITE_SPACE)
    if not text:
        raise ProtocolError("bad_message", "text must not be empty")
    if all(unicodedata.category(c) == "Cf" for c in text):
        raise ProtocolError(
            "bad_message", "text must not be made only of invisible format characters"
        )
    if len(text) > max_text:
        raise ProtocolError(
            "bad_message", f"text must be at most {max_text} characters, got {len(text)}"
        )
    nonce = frame.get("nonce")
    if "nonce" in frame:  # optional, but when present (even null) it must be a string
        if not isinstance(nonce, str) or not _encodable(nonce):
            raise ProtocolError("bad_message", "nonce must be a string of Unicode characters")
        if len(nonce) > MAX_NONCE:
            raise ProtocolError("bad_message", f"nonce must be at most {MAX_NONCE} characters")
    return SendRequest(text, nonce)


# --- server frames -----------------------------------------------------------------------


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=8)
def _limits_json(items: tuple[tuple[str, Any], ...]) -> str:
    """A welcome's `limits` object: the same for every welcome of a process."""
    return json.dumps(dict(items), ensure_ascii=False, separators=(",", ":"))


def message_dict(message: Message) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "message",
        "id": message.id,
        "room": message.room,
        "name": message.name,
        "text": message.text,
        "ts": message.ts,
    }
    if message.nonce is not None:
        frame["nonce"] = message.nonce
    if message.user is not None:  # authenticated mode: the sender's `sub` (1.1, additive)
        frame["user"] = message.user
    return frame


def encode_message(message: Message) -> bytes:
    return _dumps(message_dict(message))


def encode_welcome(
    room: str, member: str, members: Sequence[str], member_count: int, limits: Mapping[str, Any]
) -> bytes:
    """The welcome of the connection that is `member` (protocol.member_key), listing
    `members` (presence members) by display name. In authenticated mode it also carries, as
    additive fields, the connection's own `user` and `users`: the `sub` of each member, in
    the order of `members`, so a client can tell two users of one display name apart.

    Every resume of a storm encodes one, listing up to `presence_limit` names: in anonymous
    mode (no member holds a `sub`) the frame is put together from its JSON pieces, the same
    bytes as `_dumps` of the dict below in a fifth of the time.
    """
    if MEMBER_SEP not in member and MEMBER_SEP not in "".join(members):
        listed = ",".join(map(encode_basestring, members))
        return (
            f'{{"type":"welcome","room":{encode_basestring(room)},'
            f'"name":{encode_basestring(member)},"members":[{listed}],'
            f'"member_count":{int(member_count)},"limits":{_limits_json(tuple(limits.items()))}}}'
        ).encode()
    frame: dict[str, Any] = {
        "type": "welcome",
        "room": room,
        "name": member_name(member),
        "members": [member_name(m) for m in members],
        "member_count": member_count,
        "limits": dict(limits),
    }
    user = member_user(member)
    if user is not None:
        frame["user"] = user
        frame["users"] = [member_user(m) or "" for m in members]
    return _dumps(frame)


def encode_rooms(rooms: Sequence[RoomInfo]) -> bytes:
    """The body of GET /api/rooms."""
    listed = [{"room": r.room, "member_count": r.member_count, "last_ts": r.last_ts} for r in rooms]
    return _dumps({"rooms": listed})


def encode_presence(room: str, event: str, member: str) -> bytes:
    """A join or leave of `member`; in authenticated mode with its `user` (additive)."""
    frame = {"type": "presence", "room": room, "event": event, "name": member_name(member)}
    user = member_user(member)
    if user is not None:
        frame["user"] = user
    return _dumps(frame)


def encode_refreshed(exp: int) -> bytes:
    """The answer to an accepted `refresh`: the new token's expiry, seconds since the epoch."""
    return _dumps({"type": "refreshed", "exp": exp})


def encode_error(code: str, message: str) -> bytes:
    return _dumps({"type": "error", "code": code, "message": message})


GAP: Final = _dumps({"type": "gap"})


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of an HTTP error answer."""
    return {"error": {"code": code, "message": message}}


# --- WebSocket framing -------------------------------------------------------------------


def ws_close_frame(code: int, reason: str) -> bytes:
    """An unmasked close frame (RFC 6455 5.5.1) with `code` and a reason of at most 123 bytes."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    return bytes((0x88, len(payload))) + payload


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (RFC 6455 5.2), as a server sends it.

    Built once per message so the hub can write the very same bytes to every recipient.
    """
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + payload
