"""What the service must answer, written from PROTOCOL.md and RFC 6455, not from its code.

Nothing here imports `webchat`: the rules are the contract's (and the WebSocket and URL
standards'), so a service that drifts from them fails. Where the contract leaves a choice to the
implementation, the oracle accepts each answer the standards allow and says so (`either`).

Pure: no I/O. `message_answer` for a client's whole data message, `close_answer`,
`ping_answer`, and `connect_answer`/`api_answer` for HTTP requests.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

# --- limits of the servers the fuzzer starts (PROTOCOL.md's defaults) -----------------------

MAX_TEXT = 2000
MAX_NONCE = 64
MAX_NAME = 32
MAX_FRAME = 16384  # --max-frame: a larger message closes the connection with 1009
PRESENCE_LIMIT = 200

# Unicode White_Space (PropList.txt): what `text` and `name` are trimmed of.
WHITE_SPACE = frozenset(
    [chr(c) for c in (*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B))]
    + [chr(c) for c in (0x2028, 0x2029, 0x202F, 0x205F, 0x3000)]
)
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
KEY_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
HISTORY_RE = re.compile(r"[0-9]{1,9}")  # "integer 0-500" in decimal digits
LIMIT_RE = HISTORY_RE


# --- answers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Echo:
    """The sender gets its message back (PROTOCOL.md: the echo is the acknowledgement)."""

    text: str
    nonce: str | None
    has_nonce: bool


@dataclass(frozen=True, slots=True)
class Error:
    code: str


@dataclass(frozen=True, slots=True)
class Close:
    """The server closes with one of `codes` (1005: a close frame without a status)."""

    codes: frozenset[int]
    why: str = ""


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Nothing:
    """No answer (a pong from the client)."""


@dataclass(frozen=True, slots=True)
class Either:
    """Where a standard requires one answer and the service may give another that is harmless
    (e.g. aiohttp reads unmasked client frames, RFC 6455 5.1 says close with 1002)."""

    strict: Answer
    lenient: Answer
    why: str


Answer = Echo | Error | Close | Pong | Nothing | Either


# --- client data messages (PROTOCOL.md "Frames from the client", errors) --------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def _any_int(digits: str) -> Any:
    # JSON numbers have no size limit; Python's int() refuses more than 4300 digits.
    return 0 if len(digits) > 1000 else int(digits)


def _unicode(value: str) -> bool:
    """False for a string holding a lone surrogate (a JSON `\\ud800` escape): no Unicode text."""
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def _trim(value: str) -> str:
    start, end = 0, len(value)
    while start < end and value[start] in WHITE_SPACE:
        start += 1
    while end > start and value[end - 1] in WHITE_SPACE:
        end -= 1
    return value[start:end]


def _format_only(text: str) -> bool:
    return all(unicodedata.category(c) == "Cf" for c in text)


def message_answer(payload: bytes) -> Answer:
    """The answer to one whole text message (its frames' payloads joined)."""
    if len(payload) > MAX_FRAME:
        return Close(frozenset({1009}), "message over --max-frame")
    try:
        document = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Close(frozenset({1007}), "text frame not UTF-8 (RFC 6455 8.1)")
    try:
        frame = json.loads(document, parse_constant=_no_constants, parse_int=_any_int)
    except RecursionError:  # nesting past what any parser can hold: not read, said so
        return Error("bad_json")
    except ValueError:
        return Error("bad_json")
    if not isinstance(frame, dict):
        return Error("bad_json")
    if frame.get("type") == "refresh":  # 1.1: a token check, then bad_type in anonymous mode
        token = frame.get("token")
        return Error("bad_type" if isinstance(token, str) and token else "bad_message")
    if frame.get("type") != "message":
        return Error("bad_type")
    text = frame.get("text")
    if not isinstance(text, str) or not _unicode(text):
        return Error("bad_message")
    text = _trim(text)
    if not text or _format_only(text) or len(text) > MAX_TEXT:
        return Error("bad_message")
    has_nonce = "nonce" in frame
    nonce = frame.get("nonce")
    if has_nonce and (not isinstance(nonce, str) or not _unicode(nonce) or len(nonce) > MAX_NONCE):
        return Error("bad_message")
    return Echo(text, nonce, has_nonce)


def binary_answer() -> Answer:
    return Error("bad_type")


# --- control frames (RFC 6455 5.5, 7.4) -----------------------------------------------------

# Status codes an endpoint may send (RFC 6455 7.4.1 and the IANA registry: 1012-1014), and the
# application ranges 3000-4999.
_VALID_CLOSE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


def close_answer(payload: bytes) -> Answer:
    """The server's reply to a client's close frame."""
    if not payload:
        return Close(frozenset({1000, 1005}), "close without a status")
    if len(payload) == 1:
        return Close(frozenset({1002}), "a one-byte close payload")
    code = int.from_bytes(payload[:2], "big")
    valid = code in _VALID_CLOSE or 3000 <= code <= 4999
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        # Both wrong: which one an endpoint checks first is its choice.
        return Close(frozenset({1007} if valid else {1002, 1007}), "a close reason not UTF-8")
    if valid:
        return Close(frozenset({1000, code}), "close")
    if code == 1006 or code >= 5000:
        # Undefined or reserved-never-sent: RFC 6455 7.4 makes such a frame invalid (1002);
        # aiohttp takes them as a normal close. Either way the connection ends.
        return Either(
            Close(frozenset({1002})), Close(frozenset({1000, code})), "undefined close code"
        )
    return Close(frozenset({1002}), f"close code {code} may not be sent")


def ping_answer(payload: bytes) -> Answer:
    if len(payload) > 125:
        return Close(frozenset({1002}), "a control frame over 125 bytes")
    return Pong(payload)


def violation(why: str) -> Close:
    """A framing rule broken: RFC 6455 5.2-5.5 says fail the connection (1002)."""
    return Close(frozenset({1002}), why)


# --- HTTP (PROTOCOL.md "Connecting", "HTTP API") ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Http:
    """Acceptable statuses, the error code a JSON error body must carry (if one must)."""

    statuses: frozenset[int]
    code: str | None = None
    why: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


def query_params(query: str) -> dict[str, str]:
    """The URL's query as the application/x-www-form-urlencoded parser reads it (WHATWG URL):
    '+' is a space, %XX are bytes decoded as UTF-8 with replacement; a repeated name: the
    first one counts."""
    out: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
        out.setdefault(name, value)
    return out


def name_problem(raw: str) -> str | None:
    name = _trim(raw)
    if not name:
        return "empty"
    if len(name) > MAX_NAME:
        return "too long"
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        return "control or format characters"
    return None


def trimmed_name(raw: str) -> str:
    return _trim(raw)


def param_problem(params: Mapping[str, str]) -> str | None:
    """Why the /ws query is refused with 400, or None."""
    room = params.get("room", "lobby")
    if not ROOM_RE.fullmatch(room):
        return "room"
    if "name" in params and (problem := name_problem(params["name"])):
        return f"name {problem}"
    if "since" in params and not ID_RE.fullmatch(params["since"]):
        return "since"
    history = params.get("history")
    if history is not None and (not HISTORY_RE.fullmatch(history) or int(history) > 500):
        return "history"
    key = params.get("key")
    if key is not None and not KEY_RE.fullmatch(key):
        return "key"
    return None


def _host_port(value: str) -> str:
    host, _, port = value.lower().rpartition(":") if ":" in value else (value.lower(), "", "")
    if not host:
        host, port = value.lower(), ""
    return host if port in ("", "80", "443") else f"{host}:{port}"


def origin_allowed(origin: str | None, host: str) -> bool:
    """PROTOCOL.md: no Origin, or one whose host[:port] is the request's Host (scheme ignored,
    default ports dropped); the fuzzer's servers have no allow-list. Origins the fuzzer makes
    are `scheme://host[:port]` or opaque ('null')."""
    if origin is None:
        return True
    _, sep, rest = origin.partition("://")  # the scheme is ignored
    if not sep or not rest or "/" in rest:
        return False
    return _host_port(rest) == _host_port(host)


@dataclass(frozen=True, slots=True)
class Held:
    """A name held in a room by a live session of the fuzzer, with this key (or None)."""

    room: str
    name: str
    key: str | None


DRAFT = "draft version 7 or 8"


def upgrade_headers_problem(method: str, headers: Mapping[str, str]) -> Http | None:
    """RFC 6455 4.2.1/4.4 for a request with an `Upgrade` header; None if it is well-formed."""
    lower = {k.lower(): v for k, v in headers.items()}
    if "upgrade" not in lower:
        return None
    if method != "GET":
        return Http(frozenset({400}), "bad_request", "an upgrade that is not a GET")
    if lower["upgrade"].strip().lower() != "websocket":
        return Http(frozenset({400}), "bad_request", "Upgrade is not websocket")
    tokens = {t.strip().lower() for t in lower.get("connection", "").split(",")}
    if "upgrade" not in tokens:
        return Http(frozenset({400}), "bad_request", "Connection without Upgrade")
    version = lower.get("sec-websocket-version", "")
    if version != "13":
        refused = Http(frozenset({426}), "bad_request", "version", {"sec-websocket-version": "13"})
        if version in ("7", "8"):  # drafts with RFC 6455's framing: aiohttp speaks them
            return Http(frozenset({426}), None, DRAFT)
        return refused
    key = lower.get("sec-websocket-key", "")
    if not re.fullmatch(r"[A-Za-z0-9+/]{22}==", key):
        return Http(frozenset({400}), "bad_request", "Sec-WebSocket-Key is not 16 bytes")
    return None


def connect_answer(
    method: str, query: str, headers: Mapping[str, str], held: Sequence[Held]
) -> Http:
    """GET (or HEAD) /ws: 400 for a bad parameter, 403 for a foreign origin, then a malformed
    upgrade 400/426, 409 for a name held by another key, else 101 (an upgrade) or 426 (a
    plain GET, PROTOCOL.md's check for browsers)."""
    params = query_params(query)
    if problem := param_problem(params):
        return Http(frozenset({400}), "bad_request", f"bad {problem}")
    lower = {k.lower(): v for k, v in headers.items()}
    if not origin_allowed(lower.get("origin"), lower.get("host", "")):
        return Http(frozenset({403}), "forbidden_origin", "origin")
    broken = upgrade_headers_problem(method, headers)
    if broken is not None and broken.why != DRAFT:
        return broken
    room = params.get("room", "lobby")
    name = _trim(params["name"]) if "name" in params else None
    key = params.get("key")
    answer = Http(frozenset({426}), "upgrade_required", "plain GET")
    if "upgrade" in lower:
        answer = Http(frozenset({101}), None, "upgrade")
    for hold in held:
        if hold.room == room and hold.name == name and hold.key != key:
            answer = Http(frozenset({409}), "name_taken", "name held by another key")
    if broken is not None:  # a draft version: refused (426), or served as version 13 is
        return Http(broken.statuses | answer.statuses, None, DRAFT)
    return answer


def api_answer(method: str, path: str, query: str) -> Http:
    """The HTTP API and the other routes. Unknown paths 404, other methods 405."""
    if method not in ("GET", "HEAD"):
        known = path in ("/ws", "/api/rooms", "/healthz", "/readyz", "/metrics", "/")
        known = known or re.fullmatch(r"/api/rooms/[^/]+/messages", path) is not None
        return Http(frozenset({405} if known else {404, 405}), None, "method")
    if path in ("/healthz", "/readyz", "/metrics", "/", "/api/rooms"):
        return Http(frozenset({200}), None, path)
    match = re.fullmatch(r"/api/rooms/([^/]+)/messages", path)
    if match is None:
        return Http(frozenset({404}), None, "unknown path")
    room = unquote(match[1], errors="replace")
    params = query_params(query)
    if not ROOM_RE.fullmatch(room):
        return Http(frozenset({400}), "bad_request", "room")
    since, before = params.get("since"), params.get("before")
    if since is not None and not ID_RE.fullmatch(since):
        return Http(frozenset({400}), "bad_request", "since")
    if before is not None and not ID_RE.fullmatch(before):
        return Http(frozenset({400}), "bad_request", "before")
    if since is not None and before is not None:
        return Http(frozenset({400}), "bad_request", "since and before")
    limit = params.get("limit")
    if limit is not None and (not LIMIT_RE.fullmatch(limit) or not 1 <= int(limit) <= 500):
        return Http(frozenset({400}), "bad_request", "limit")
    return Http(frozenset({200}), None, "messages")


# --- the shape of what the server sends (PROTOCOL.md "Frames from the server") ---------------


def message_frame_problem(frame: Mapping[str, Any], room: str) -> str | None:
    want = {"type", "id", "room", "name", "text", "ts"}
    extra = set(frame) - want - {"nonce", "user"}
    if not want <= set(frame) or extra:
        return f"message frame fields {sorted(frame)}"
    if not isinstance(frame["id"], str) or not ID_RE.fullmatch(frame["id"]):
        return f"message id {frame['id']!r}"
    if frame["room"] != room or not isinstance(frame["text"], str):
        return "message room or text"
    if not isinstance(frame["ts"], int) or frame["ts"] != int(frame["id"].split("-")[0]):
        return f"message ts {frame['ts']!r} is not the id's time"
    if "nonce" in frame and not isinstance(frame["nonce"], str):
        return "nonce"
    return None


def welcome_problem(frame: Mapping[str, Any], room: str, name: str | None) -> str | None:
    if frame.get("type") != "welcome" or frame.get("room") != room:
        return f"not the welcome of {room}: {dict(frame)}"
    if name is not None and frame.get("name") != name:
        return f"welcome name {frame.get('name')!r}, expected {name!r}"
    members, count = frame.get("members"), frame.get("member_count")
    if not isinstance(members, list) or not isinstance(count, int):
        return "members or member_count"
    if frame.get("name") not in members or len(set(members)) != len(members):
        return f"members {members[:5]} without the connection's name, or twice a name"
    if not len(members) <= min(count, PRESENCE_LIMIT):
        return f"{len(members)} members listed, member_count {count}"
    limits = frame.get("limits")
    if not isinstance(limits, dict) or limits.get("max_text") != MAX_TEXT:
        return f"limits {limits}"
    return None


def presence_problem(frame: Mapping[str, Any], room: str, name: str) -> str | None:
    if set(frame) != {"type", "room", "event", "name"} or frame["room"] != room:
        return f"presence frame {dict(frame)}"
    if frame["event"] not in ("join", "leave") or not isinstance(frame["name"], str):
        return f"presence frame {dict(frame)}"
    if frame["event"] == "join" and frame["name"] == name:
        return "a join for the connection itself"
    return None


def error_frame_problem(frame: Mapping[str, Any]) -> str | None:
    if set(frame) != {"type", "code", "message"}:
        return f"error frame fields {sorted(frame)}"
    message = frame["message"]
    if not isinstance(message, str) or not message or "\n" in message:
        return f"error message {message!r} is not one line"
    return None


def error_body_problem(body: bytes, code: str | None) -> str | None:
    """PROTOCOL.md: `{"error": {"code", "message"}}` with a one-line message."""
    try:
        value = json.loads(body)
        error = value["error"]
        message = error["message"]
    except (ValueError, KeyError, TypeError):
        return f"not an error body: {body[:200]!r}"
    if code is not None and error.get("code") != code:
        return f"error code {error.get('code')!r}, expected {code!r}"
    if not isinstance(message, str) or not message or "\n" in message:
        return f"error message {message!r} is not one line"
    return None
