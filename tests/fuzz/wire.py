"""RFC 6455 framing for the fuzzer: client frames of any shape, the server's frames read back.

Client frames can break any rule on purpose (RSV bits, unknown opcodes, no mask, a length field
that lies); the server's frames are checked against the rules a server must keep (unmasked,
final, no RSV bits, control payloads of at most 125 bytes): a violation is a failure.
"""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (OP_CONT, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    declared: int | None = None,
    long_form: bool = False,
) -> bytes:
    """One client frame. `declared` puts another length in the header than the payload has
    (a frame cut short); `long_form` writes a small length in the 64-bit form (allowed)."""
    length = len(payload) if declared is None else declared
    head = bytearray([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if masked else 0
    if long_form or length >= 1 << 16:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", length)
    elif length >= 126:
        head.append(mask_bit | 126)
        head += struct.pack("!H", length)
    else:
        head.append(mask_bit | length)
    if not masked:
        return bytes(head) + payload
    key = os.urandom(4)
    n = len(payload)
    if n:
        mask = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return bytes(head) + key + payload


class ServerBroke(AssertionError):
    """The server sent something no WebSocket server may send."""


@dataclass(frozen=True, slots=True)
class ServerFrame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        """The close frame's status code; 1005 (no status) for an empty close frame."""
        if self.opcode != OP_CLOSE:
            return None
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005


async def read_server_frame(reader: asyncio.StreamReader) -> ServerFrame | None:
    """The next frame, or None at the end of the stream (also mid-frame: the server dropped
    the connection, which is how it ends a session it gave up on)."""
    try:
        first, second = await reader.readexactly(2)
        if second & 0x80:
            raise ServerBroke("a server frame is masked")
        if first & 0x70:
            raise ServerBroke(f"a server frame has RSV bits set: {first:#04x}")
        if not first & 0x80:
            raise ServerBroke("the server fragmented a frame (PROTOCOL.md: frames are whole)")
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await reader.readexactly(8))[0]
        opcode = first & 0x0F
        if opcode in CONTROL_OPCODES and length > 125:
            raise ServerBroke(f"a server control frame of {length} bytes")
        if opcode not in (OP_TEXT, *CONTROL_OPCODES):
            raise ServerBroke(f"a server frame with opcode {opcode:#x}")
        return ServerFrame(opcode, await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
