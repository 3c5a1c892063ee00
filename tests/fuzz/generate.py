"""Seeded generators of what the fuzzer sends: sessions of WebSocket frames, HTTP requests.

Every value comes from one `random.Random(seed)`, so a failure is reproduced with its seed.
What a case must get back is decided here only where the generator built it on purpose (a
framing rule broken, an origin made foreign); everything a payload or a query means is
decided by the oracle, from the bytes actually sent.
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

from tests.fuzz import oracle
from tests.fuzz.oracle import Answer, Close, Either, Held, Http, Nothing
from tests.fuzz.wire import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, client_frame

ROOMS = ("fz0", "fz1", "fz2", "fz3", "lobby")
KEPT = Held("kept", "keeper", "keeperKEY0123456789")  # held by a session all run long

# Characters to build texts and names from: scripts, astral emoji, combining marks,
# right-to-left, white space of every kind, format and control characters.
POOLS = (
    string.ascii_letters + string.digits + " .,!?-_'\"\\/{}[]:",
    "àéîõüßçñøåÆŒ€£¥§¶",
    "漢字かなカナ한국어中文",
    "😀🎉👍🏽🇫🇷\u200d\U0001d518\U0001d52b\U0001d526",  # emoji, a ZWJ, math letters
    "e\u0301a\u0308o\u0302",
    "שלום عربي",
    "".join(sorted(oracle.WHITE_SPACE)),
    "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad",
    "\x00\x01\x07\x1b\x7f\x1c\x1f",
)


@dataclass
class Action:
    """Frames to write and what each must bring back, in order (pongs, then the message's
    answer); `fatal`: the session ends with it; `garbage`: after it only the end counts."""

    kind: str
    frames: list[bytes]
    answers: list[Answer]
    fatal: bool = False
    garbage: bool = False


@dataclass
class SessionPlan:
    room: str
    query: str
    name: str  # as the welcome must say it (trimmed)
    actions: list[Action] = field(default_factory=list)


@dataclass
class HttpCase:
    kind: str
    raw: bytes
    expect: Http | None  # None: only "no 5xx, no crash" (a mutated request)
    head: bool = False


class Generator:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.seed = seed
        self._serial = 0

    def serial(self) -> int:
        self._serial += 1
        return self._serial

    # --- text ----------------------------------------------------------------------------

    def chars(self, n: int, pools: tuple[str, ...] = POOLS[:6]) -> str:
        r = self.r
        return "".join(r.choice(r.choice(pools)) for _ in range(n))

    def text(self) -> str:
        r = self.r
        roll = r.random()
        if roll < 0.6:
            body = self.chars(r.randint(1, 40))
        elif roll < 0.7:
            body = self.chars(r.randint(1, 10), POOLS)  # with format and control characters
        elif roll < 0.8:
            body = r.choice("x😀\u3000e\u0301") * r.choice((1999, 2000, 2001, 2002))
        elif roll < 0.85:
            body = "".join(r.choice(POOLS[7]) for _ in range(r.randint(1, 5)))  # only Cf
        elif roll < 0.9:
            body = ""
        else:
            body = self.chars(r.randint(100, 1500))
        pad = "".join(r.choice(POOLS[6]) for _ in range(r.choice((0, 0, 1, 3))))
        return pad + body + pad[::-1]

    def nonce(self, used: list[str]) -> str:
        r = self.r
        roll = r.random()
        if used and roll < 0.15:
            return r.choice(used)  # a resend: the original comes back
        if roll < 0.2:
            return "n" * r.choice((63, 64, 65, 100))
        if roll < 0.3:
            return self.chars(r.randint(0, 70))
        nonce = f"n{self.serial()}"
        used.append(nonce)
        return nonce

    # --- JSON ----------------------------------------------------------------------------

    def json_value(self, depth: int = 0) -> object:
        r = self.r
        kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 3 else [])
        kind = r.choice(kinds)
        if kind == "str":
            return self.chars(r.randint(0, 8), POOLS)
        if kind == "int":
            return r.choice((0, -1, 2**31, 2**63, -(2**64), r.randint(-1000, 1000)))
        if kind == "float":
            return r.choice((0.5, -1e-300, 1e300, 3.14))
        if kind == "bool":
            return r.random() < 0.5
        if kind == "null":
            return None
        if kind == "list":
            return [self.json_value(depth + 1) for _ in range(r.randint(0, 3))]
        return {self.chars(r.randint(0, 5)): self.json_value(depth + 1) for _ in range(3)}

    def encode(self, value: object) -> bytes:
        r = self.r
        text = json.dumps(
            value,
            ensure_ascii=r.random() < 0.3,
            separators=r.choice(((",", ":"), (", ", ": "), (" ,", " : "))),
            indent=r.choice((None, None, None, 0, 2, "\t")),
        )
        if r.random() < 0.1:
            text = text.replace("/", "\\/")
        if r.random() < 0.1:
            text = r.choice((" ", "\n", "\r\n\t")) + text + r.choice((" ", "\n", ""))
        return text.encode("utf-8", "surrogatepass")

    def message_value(self, used: list[str]) -> dict[str, object]:
        r = self.r
        value: dict[str, object] = {"type": "message", "text": self.text()}
        if r.random() < 0.7:
            value["nonce"] = self.nonce(used)
        if r.random() < 0.1:
            value["extra"] = self.json_value()
        if r.random() < 0.3:
            items = list(value.items())
            r.shuffle(items)
            value = dict(items)
        return value

    def shaped_value(self, used: list[str]) -> object:
        """A frame of the right kind with a field of the wrong shape, or another shape."""
        r = self.r
        value = self.message_value(used)
        roll = r.random()
        if roll < 0.05:  # a refresh (1.1): the fuzzed server runs in anonymous mode
            return {"type": "refresh", "token": r.choice(("t", "", None, 5, self.chars(40)))}
        if roll < 0.2:
            value["type"] = r.choice(("Message", "welcome", "", None, 1, ["message"], {"a": 1}))
        elif roll < 0.4:
            value["text"] = r.choice((None, 5, [], {}, True, "\ud800", "a\udfffb"))
        elif roll < 0.55:
            value["nonce"] = r.choice((None, 5, [], {}, "\udc00"))
        elif roll < 0.7:
            value.pop(r.choice(list(value)))
        elif roll < 0.8:
            return r.choice(([], [value], "message", 42, None, True, {}))
        else:
            value[self.chars(3)] = self.json_value()
        return value

    def broken_json(self, used: list[str]) -> bytes:
        r = self.r
        good = self.encode(self.message_value(used))
        cases: list[Callable[[], bytes]] = [
            lambda: good[: r.randint(0, max(len(good) - 1, 0))],
            lambda: good + r.choice((b",", b"}", b" x", b"\x00", b"[]")),
            lambda: b"\xef\xbb\xbf" + good,  # a byte order mark
            lambda: good.replace(b'"', b"'", 2),
            lambda: (
                b'{"type": "message", "text": "x", "n": '
                + r.choice((b"NaN", b"Infinity", b"-Infinity", b"01", b"1.", b".5", b"+1", b"0x10"))
                + b"}"
            ),
            lambda: b'{"type": "message", "text": "a\x01b"}',  # a raw control character
            lambda: b'{"type": "message", "text": "\\x41"}',  # an invalid escape
            lambda: b'{"type": "message", "text": "\\ud83d\\ude00"}',  # a valid pair
            lambda: b'{"type": "message", "text": "' + b"\\u00e9" * 3 + b'"}',
            lambda: b'{"type": "message", "text": "x", "n": ' + b"9" * r.randint(4000, 6000) + b"}",
            lambda: b"[" * r.randint(5000, 20000),
            lambda: (
                b'{"type": "message", "text": "x", "a": '
                + b"[" * r.randint(3, 60)
                + b"]" * r.randint(3, 60)
                + b"}"
            ),
            lambda: b'{"type": "message", "text": "a", "text": "b"}',  # the last one counts
            lambda: b"",
            lambda: b" \t\r\n",
            lambda: b"null",
            lambda: b'{"type": "message", "text": "x"} {"type": "message", "text": "y"}',
            lambda: b"{'type': 'message'}",
            lambda: b'{"type": "message", "text": "x",}',
            lambda: b'{"type": "message", /* c */ "text": "x"}',
        ]
        return r.choice(cases)()

    def mutate(self, payload: bytes) -> bytes:
        r = self.r
        data = bytearray(payload)
        for _ in range(r.randint(1, 4)):
            roll = r.random()
            at = r.randint(0, len(data)) if data else 0
            if roll < 0.3 and data:
                data[min(at, len(data) - 1)] ^= 1 << r.randint(0, 7)
            elif roll < 0.5:
                data[at:at] = bytes([r.randint(0, 255)])
            elif roll < 0.65 and data:
                del data[at : at + r.randint(1, 4)]
            elif roll < 0.8:
                data[at:at] = r.choice(('"', "\\", "{", "}", "[", ",", ":", "é", "😀")).encode()
            elif roll < 0.9 and data:
                end = min(len(data), at + r.randint(1, 16))
                data[at:at] = data[at:end]
            else:  # overlong, a surrogate, a byte UTF-8 never has, past U+10FFFF
                data[at:at] = r.choice((b"\xc0\x80", b"\xed\xa0\x80", b"\xff", b"\xf4\x90\x80\x80"))
        if r.random() < 0.7:
            # Mostly valid UTF-8 still (a text frame that is not ends the session, 1007, and
            # the rest of a session is worth fuzzing too).
            return bytes(data).decode("utf-8", "replace").encode()
        return bytes(data)

    # --- framing -------------------------------------------------------------------------

    def pieces(self, payload: bytes) -> list[bytes]:
        """The payload cut into 2-5 fragments, anywhere (also inside a UTF-8 sequence)."""
        r = self.r
        cuts = sorted(r.randint(0, len(payload)) for _ in range(r.randint(1, 4)))
        bounds = [0, *cuts, len(payload)]
        return [payload[a:b] for a, b in itertools.pairwise(bounds)]

    def ping_payload(self) -> bytes:
        return bytes(self.r.randint(0, 255) for _ in range(self.r.randint(0, 20)))

    def data_message(self, kind: str, payload: bytes, opcode: int = OP_TEXT) -> Action:
        """One whole data message, as one frame or fragments with pings between them."""
        r = self.r
        answer = (
            oracle.message_answer(payload)
            if opcode == OP_TEXT
            else (
                Close(frozenset({1009}), "binary over --max-frame")
                if len(payload) > oracle.MAX_FRAME
                else oracle.binary_answer()
            )
        )
        if r.random() < 0.8 or not payload:
            return Action(kind, [client_frame(opcode, payload)], [answer], _fatal(answer))
        # Invalid UTF-8 may be found as soon as a fragment holds it (RFC 6455 8.1 lets an
        # endpoint fail fast) or once the message is whole: no pings between the fragments of
        # a message that ends the session, so that no pong depends on which.
        pings = not isinstance(answer, Close)
        utf8 = opcode != OP_TEXT or _is_utf8(payload)
        frames: list[bytes] = []
        answers: list[Answer] = []
        sent = 0
        parts = self.pieces(payload)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            frames.append(client_frame(opcode if i == 0 else OP_CONT, part, fin=last))
            sent += len(part)
            if sent > oracle.MAX_FRAME:  # the size check fails at the fragment that overflows
                codes = frozenset({1009} if utf8 else {1007, 1009})
                big = Close(codes, "fragmented message over --max-frame")
                return Action(f"{kind}/fragmented", frames, [*answers, big], True)
            if pings and not last and r.random() < 0.3:  # control frames between fragments
                ping = self.ping_payload()
                frames.append(client_frame(OP_PING, ping))
                answers.append(oracle.ping_answer(ping))
        return Action(f"{kind}/fragmented", frames, [*answers, answer], _fatal(answer))

    def violation(self) -> Action:
        """A framing rule broken: the session ends with 1002 (1009 for an oversize header)."""
        r = self.r
        body = b'{"type":"message","text":"x"}'
        cases: list[tuple[str, list[bytes], Answer]] = [
            ("rsv", [client_frame(OP_TEXT, body, rsv=r.randint(1, 7))], oracle.violation("rsv")),
            (
                "opcode",
                [client_frame(r.choice((3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)), body)],
                oracle.violation("reserved opcode"),
            ),
            (
                "continuation",
                [client_frame(OP_CONT, body)],
                oracle.violation("no message to go on"),
            ),
            (
                "interleaved",
                [client_frame(OP_TEXT, body[:5], fin=False), client_frame(OP_TEXT, body)],
                oracle.violation("a new message inside a fragmented one"),
            ),
            (
                "fragmented ping",
                [client_frame(OP_PING, b"p", fin=False)],
                oracle.violation("a fragmented control frame"),
            ),
            (
                "big ping",
                [client_frame(OP_PING, bytes(r.randint(126, 300)))],
                oracle.violation("a ping over 125 bytes"),
            ),
            (
                "big close",
                [client_frame(OP_CLOSE, b"\x03\xe8" + b"r" * 130)],
                oracle.violation("a close over 125 bytes"),
            ),
            (
                "huge header",
                [client_frame(OP_TEXT, b"", declared=r.choice((16385, 2**20, 2**63 - 1)))],
                Close(frozenset({1009}), "a frame over --max-frame"),
            ),
        ]
        kind, frames, answer = r.choice(cases)
        return Action(f"violation/{kind}", frames, [answer], True)

    def close_action(self) -> Action:
        r = self.r
        code = r.choice(
            (
                1000,
                1000,
                1001,
                1003,
                1007,
                3000,
                4999,
                999,
                1004,
                1005,
                1006,
                1015,
                1016,
                2999,
                5000,
                65535,
                0,
            )
        )
        roll = r.random()
        if roll < 0.1:
            payload = b""
        elif roll < 0.15:
            payload = bytes([r.randint(0, 255)])
        else:
            reason = r.choice((b"", b"bye", "au revoir \u00e9".encode(), b"\xff\xfe", b"x" * 100))
            payload = code.to_bytes(2, "big") + reason
        answer = oracle.close_answer(payload)
        return Action("close", [client_frame(OP_CLOSE, payload)], [answer], True)

    def action(self, used: list[str]) -> Action:
        r = self.r
        roll = r.random()
        if roll < 0.30:
            return self.data_message("message", self.encode(self.message_value(used)))
        if roll < 0.50:
            shaped = self.shaped_value(used)
            return self.data_message("shaped", self.encode(shaped))
        if roll < 0.62:
            return self.data_message("broken", self.broken_json(used))
        if roll < 0.80:
            return self.data_message("mutated", self.mutate(self.encode(self.message_value(used))))
        if roll < 0.83:
            return self.data_message("binary", self.encode(self.message_value(used)), OP_BINARY)
        if roll < 0.85:
            size = r.choice((oracle.MAX_FRAME - 40, oracle.MAX_FRAME + 1, 40_000))
            value = {"type": "message", "text": "big", "pad": "p" * size}
            return self.data_message("big", json.dumps(value).encode()[: size + 40])
        if roll < 0.92:
            ping = self.ping_payload()
            return Action("ping", [client_frame(OP_PING, ping)], [oracle.ping_answer(ping)])
        if roll < 0.95:
            return Action("pong", [client_frame(OP_PONG, self.ping_payload())], [Nothing()])
        if roll < 0.96:
            return self.unmasked(used)
        if roll < 0.97:
            # A small length written in the 64-bit form: RFC 6455 5.2 wants the shortest form
            # (1002), a lenient reader takes the frame.
            if r.random() < 0.5:
                ping = self.ping_payload()
                frame = client_frame(OP_PING, ping, long_form=True)
                normal = oracle.ping_answer(ping)
            else:
                payload = self.encode(self.message_value(used))
                frame = client_frame(OP_TEXT, payload, long_form=True)
                normal = oracle.message_answer(payload)
            answer = Either(oracle.violation("a length not in its shortest form"), normal, "long")
            return Action("long-form length", [frame], [answer])
        return self.garbage()

    def unmasked(self, used: list[str]) -> Action:
        payload = self.encode(self.message_value(used))
        normal = oracle.message_answer(payload)
        answer = Either(oracle.violation("an unmasked client frame"), normal, "unmasked")
        return Action("unmasked", [client_frame(OP_TEXT, payload, masked=False)], [answer])

    def garbage(self) -> Action:
        r = self.r
        roll = r.random()
        if roll < 0.5:  # a frame whose header promises more than comes: the server must wait,
            # then see the end of the stream and let go
            frame = client_frame(OP_TEXT, b"abc", declared=r.randint(10, 1000))
        else:
            frame = bytes(r.randint(0, 255) for _ in range(r.randint(1, 64)))
        return Action("garbage", [frame], [], fatal=True, garbage=True)

    # --- sessions ------------------------------------------------------------------------

    def session(self, run: str) -> SessionPlan:
        r = self.r
        room = r.choice(ROOMS)
        unique = f"{run}{self.serial()}"
        raw_name = r.choice(("", " ", "\u3000", "\t")) + unique + r.choice(("", "é", "😀", " "))
        query = [("room", room), ("name", raw_name)]
        if r.random() < 0.2:
            query.append(("key", "k" * 16 + unique))
        if r.random() < 0.2:
            query.append(("history", str(r.randint(0, 30))))
        elif r.random() < 0.1:
            query.append(("since", f"{r.randint(0, 2**40)}-{r.randint(0, 3)}"))
        encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in query)
        plan = SessionPlan(room, encoded, oracle.trimmed_name(raw_name))
        used: list[str] = []
        for _ in range(r.randint(3, 60)):
            action = self.action(used)
            plan.actions.append(action)
            if action.fatal:
                return plan
        if r.random() < 0.15:
            plan.actions.append(self.violation())
        else:
            plan.actions.append(self.close_action())
        return plan

    # --- HTTP ----------------------------------------------------------------------------

    def _param_value(self, name: str, unique: str) -> str:
        r = self.r
        valid = r.random() < 0.6
        if name == "room":
            return r.choice(ROOMS) if valid else r.choice(("", "a b", "x" * 65, "é", "a/b", "%"))
        if name == "name":
            if valid:
                return r.choice(("", " ", "\u2003")) + unique + self.chars(r.randint(0, 6))
            return r.choice(("", " ", "\u200b" + unique, unique + "\x07", "n" * 33 + unique))
        if name == "since" or name == "before":
            if valid:
                return f"{r.randint(0, 10**20 - 1)}-{r.randint(0, 99)}"
            return r.choice(("", "1", "1-", "-1", "a-b", "1-2-3", "1" * 21 + "-0", " 1-0"))
        if name == "history" or name == "limit":
            if valid:
                return str(r.randint(0, 500))
            return r.choice(("-1", "501", "1e2", "1.0", " 5", "abc", "", "9" * 12))
        if name == "key":
            return "k" * 16 + unique if valid else r.choice(("short", "k" * 129, "k" * 15 + "!"))
        return self.chars(r.randint(0, 6), POOLS)

    def _encode_query(self, pairs: list[tuple[str, str]], clean: bool = False) -> str:
        """Percent-encoded in one of several ways; unless `clean`, sometimes with a broken
        escape appended (a URL may carry one: it stays as it is)."""
        r = self.r
        out = []
        for name, value in pairs:
            how = r.random() * (0.8 if clean else 1.0)
            if how < 0.4:
                encoded = quote(value, safe="")
            elif how < 0.6:
                encoded = quote_plus(value, safe="")
            elif how < 0.8:  # every character percent-encoded, also the safe ones
                encoded = "".join(f"%{b:02X}" for b in value.encode())
            else:  # broken escapes a URL may carry: kept as they are
                encoded = quote(value, safe="") + r.choice(("%", "%z", "%F", "%FF", "%C3"))
            out.append(f"{quote(name, safe='')}={encoded}" if r.random() < 0.95 else name)
        return "&".join(out)

    def ws_request(self, port: int, unique: str) -> HttpCase:
        r = self.r
        pairs: list[tuple[str, str]] = []
        for name in ("room", "name", "since", "history", "key", "other"):
            if r.random() < (0.9 if name in ("room", "name") else 0.2):
                pairs.append((name, self._param_value(name, unique)))
        if r.random() < 0.1 and pairs:
            pairs.append((r.choice(pairs)[0], self._param_value(r.choice(pairs)[0], unique)))
        held = r.random() < 0.1
        if held:  # the held name, with its key or another (the same name in every such case)
            pairs = [("room", KEPT.room), ("name", KEPT.name)]
            if r.random() < 0.6:
                pairs.append(("key", r.choice((KEPT.key or "", "k" * 16 + unique))))
        r.shuffle(pairs)
        query = self._encode_query(pairs, clean=held)
        headers = {"Host": f"127.0.0.1:{port}"}
        roll = r.random()
        if roll < 0.15:
            headers["Origin"] = r.choice(
                (
                    f"http://127.0.0.1:{port}",
                    f"https://127.0.0.1:{port}",
                    "http://evil.example",
                    "null",
                    "http://127.0.0.1",
                    f"http://localhost:{port}",
                )
            )
        upgrade = r.random() < 0.5
        if upgrade:
            headers |= {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            }
            if r.random() < 0.3:
                broken = r.choice(
                    (
                        ("Sec-WebSocket-Version", r.choice(("12", "", "14", "8"))),
                        ("Sec-WebSocket-Key", r.choice(("", "c2hvcnQ=", "x" * 24))),
                        ("Connection", "keep-alive"),
                        ("Upgrade", r.choice(("h2c", "WebSocket", "websocket, h2c"))),
                    )
                )
                headers[broken[0]] = broken[1]
        method = "HEAD" if r.random() < 0.05 else "GET"
        expect = oracle.connect_answer(method, query, headers, [KEPT])
        name = oracle.query_params(query).get("name")
        if name is not None and unique not in name and name != KEPT.name and expect.code != 400:
            # A name other cases may make too (a broken escape took the unique part): one of
            # them may hold it now.
            taken = Http(frozenset({409}), "name_taken", "a name other cases may hold")
            expect = Http(expect.statuses | taken.statuses, None, f"{expect.why} or taken")
        raw = _request(method, f"/ws?{query}", headers)
        return HttpCase("ws" + ("/upgrade" if upgrade else ""), raw, expect, method == "HEAD")

    def api_request(self, port: int) -> HttpCase:
        r = self.r
        roll = r.random()
        headers = {"Host": f"127.0.0.1:{port}"}
        if roll < 0.6:
            room = self._param_value("room", "")
            segment = quote(room, safe="")
            if r.random() < 0.1 and all((c.isascii() and c.isalnum()) or c in "/-_." for c in room):
                segment = room.replace("/", "%2F")  # written as it is where HTTP allows
            pairs = [
                (name, self._param_value(name, ""))
                for name in ("since", "before", "limit")
                if r.random() < 0.4
            ]
            query = self._encode_query(pairs)
            path = f"/api/rooms/{segment}/messages"
        else:
            path = r.choice(
                ("/api/rooms", "/healthz", "/readyz", "/metrics", "/", "/nope", "/api", "/ws/x")
            )
            query = self._encode_query([("a", self.chars(3))]) if r.random() < 0.3 else ""
        method = r.choice(("GET",) * 8 + ("HEAD", "POST", "PUT", "DELETE", "OPTIONS"))
        expect = oracle.api_answer(method, path, query)
        target = f"{path}?{query}" if query else path
        return HttpCase("api", _request(method, target, headers), expect, method == "HEAD")

    def mutated_request(self, port: int, unique: str) -> HttpCase:
        base = self.ws_request(port, unique) if self.r.random() < 0.5 else self.api_request(port)
        raw = base.raw
        head, sep, _ = raw.partition(b"\r\n\r\n")
        mutated = self.mutate(head)
        # Keep it a complete request (so the server answers, rather than waits for more).
        return HttpCase("mutated", mutated.replace(b"\r\n\r\n", b"\r\n") + sep, None)

    def http(self, port: int, unique: str) -> HttpCase:
        """One request; `unique` goes into the names it makes, so no two cases share one."""
        roll = self.r.random()
        if roll < 0.5:
            return self.ws_request(port, unique)
        if roll < 0.8:
            return self.api_request(port)
        return self.mutated_request(port, unique)


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fatal(answer: Answer) -> bool:
    return isinstance(answer, Close)


def _request(method: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join([*lines, "Connection: close", "", ""])).encode("utf-8")
