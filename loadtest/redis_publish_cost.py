#!/usr/bin/env python3
"""What one message costs Redis: the publish script's time and the bytes its nonce keeps.

    python loadtest/redis_publish_cost.py --url http://127.0.0.1:8091 --redis-port 6391 \
        --messages 5000 [--text-bytes 2000] [--senders 4]

Run it against an instance started with a small --history-size (100, say) to measure a busy
room that trims on every message, and with the default to measure one that does not. The
senders share one room and send numbered messages with nonces, each waiting for its echo (the
instance's rate limit must allow it: --rate 1000 --burst 1000). Prints one JSON line: the
publish script's Redis-side time (EVALSHA µs per call, from INFO commandstats, which counts
only the time inside Redis), the dedupe keys of the room and their MEMORY USAGE (total and
per key), and the room's history length. Works against any version of the service.

Only loopback targets are accepted and every count is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
import redis

from _bench import loopback


async def sender(
    session: aiohttp.ClientSession, ws_url: str, room: str, n: int, count: int, text: str
) -> None:
    async with session.ws_connect(ws_url, params={"room": room, "name": f"s{n}"}) as ws:
        await ws.receive_json()  # welcome
        for i in range(count):
            nonce = f"{n}-{i}"
            # Not escaped: 2000 emoji are 8000 bytes of UTF-8 (24,000 as \\u escapes).
            frame = {"type": "message", "text": text, "nonce": nonce}
            await ws.send_str(json.dumps(frame, ensure_ascii=False))
            while True:
                frame = await ws.receive_json()
                if frame.get("type") == "error":
                    raise SystemExit(f"the instance answered {frame}")
                if frame.get("type") == "message" and frame.get("nonce") == nonce:
                    break


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = loopback(args.url)
    ws_url = url.replace("http", "ws", 1) + "/ws"
    client = redis.Redis(port=args.redis_port)
    room = f"cost{int(time.time())}"
    # 4-byte code points: 8000 bytes is the longest text (max_text, 2000 code points).
    text = "\U0001f600" * (args.text_bytes // 4) + "x" * (args.text_bytes % 4)
    before = client.info("commandstats").get("cmdstat_evalsha", {})
    per_sender = args.messages // args.senders
    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(
            *(sender(session, ws_url, room, n, per_sender, text) for n in range(args.senders))
        )
    elapsed = time.monotonic() - began
    after = client.info("commandstats").get("cmdstat_evalsha", {})
    calls = after.get("calls", 0) - before.get("calls", 0)
    usec = after.get("usec", 0) - before.get("usec", 0)
    nonce_keys = list(client.scan_iter(f"wc:{{{room}}}:n:*", count=5000))
    sizes = [client.memory_usage(k, samples=0) or 0 for k in nonce_keys]
    return {
        "messages": per_sender * args.senders,
        "text_bytes": len(text.encode()),
        "messages_per_s": round(per_sender * args.senders / elapsed, 1),
        "evalsha_calls": calls,
        "evalsha_usec_per_call": round(usec / calls, 2) if calls else None,
        "dedupe_keys": len(nonce_keys),
        "dedupe_bytes": sum(sizes),
        "dedupe_bytes_per_key": round(sum(sizes) / len(sizes)) if sizes else 0,
        "dedupe_keys_holding_a_message": sum(
            1 for k in nonce_keys if (client.get(k) or b"").startswith(b"{")
        ),
        "history_length": client.xlen(f"wc:{{{room}}}:h"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT of one instance")
    parser.add_argument("--redis-port", type=int, required=True, help="its Redis, on loopback")
    parser.add_argument(
        "--messages", type=int, default=5000, choices=range(1, 1_000_001), metavar="N"
    )
    parser.add_argument(
        "--text-bytes", type=int, default=8, choices=range(1, 8001), metavar="1-8000"
    )
    parser.add_argument("--senders", type=int, default=4, choices=range(1, 101), metavar="1-100")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))
    print(
        f"{result['messages']} messages: publish script {result['evalsha_usec_per_call']} µs "
        f"in Redis; {result['dedupe_keys']} dedupe keys, {result['dedupe_bytes_per_key']} B each",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
