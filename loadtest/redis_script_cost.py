#!/usr/bin/env python3
"""The publish script's cost inside Redis, for two versions side by side, interleaved.

    python loadtest/redis_script_cost.py --redis-port 6391 \
        --scripts app/webchat/broker/redis_scripts.py --scripts /tmp/old/redis_scripts.py \
        [--history-size 100] [--calls 5000] [--rounds 5] [--text-bytes 8]

With --dedupe-ms 1 the entries trimmed are older than the dedupe window, as in a room
whose history spans more than 5 minutes; by default they are all inside it (a busy room).

Each --scripts file is loaded on its own (a copy of app/webchat/broker/redis_scripts.py from
any revision: `git show REV:app/webchat/broker/redis_scripts.py > /tmp/old/redis_scripts.py`)
and its PUBLISH script called --calls times per round with a nonce, into a room of its own that
holds --history-size messages (so, once full, every call trims one), pipelined 100 at a time.
The versions take turns each round, so a machine that is busier at one moment charges both.
Prints one JSON line per version: Redis's own time per call (INFO commandstats, EVALSHA µs) for
each round, the median and the minimum (on a busy machine the least disturbed round is the
best estimate of the script's own cost). Every ARGV layout so far is known: with or without
the room TTL, with or without the user of authenticated mode (args_for).

Only a loopback Redis is used, on the given port; the rooms are deleted afterwards.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path

import redis


def load_publish(path: str) -> str:
    spec = importlib.util.spec_from_file_location(f"scripts_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.PUBLISH)


def args_for(
    script: str, n: int, size: int, text: str, dedupe_ms: int
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV for the script's layout: channel, size, the dedupe window (ms with the
    room TTL, s before it), [room TTL ms], name, text, trace, [user], nonce; the nonce is the
    highest ARGV the script reads."""
    room = f"cost{n}"
    stream, dedupe = f"wc:{{{room}}}:h", f"wc:{{{room}}}:n:1:x"
    with_ttl = "PEXPIRE', stream, ARGV[4]" in script
    nonce_at = max(int(i) for i in re.findall(r"ARGV\[(\d+)\]", script))
    argv: list[str | int] = [f"wc:{{{room}}}:c", size]
    argv += [dedupe_ms, 604_800_000] if with_ttl else [max(1, dedupe_ms // 1000)]
    argv += ["x", text]
    argv += [""] * (nonce_at - len(argv))  # trace, and the user where the layout has one
    return [stream, dedupe], argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--scripts", action="append", required=True, help="a redis_scripts.py")
    parser.add_argument("--history-size", type=int, default=100)
    parser.add_argument(
        "--calls", type=int, default=5000, choices=range(100, 1_000_001), metavar="N"
    )
    parser.add_argument("--rounds", type=int, default=5, choices=range(1, 101), metavar="N")
    parser.add_argument("--text-bytes", type=int, default=8, choices=range(1, 8001), metavar="N")
    parser.add_argument(
        "--dedupe-ms",
        type=int,
        default=300_000,
        help="the dedupe window; 1 makes the trimmed entries older than it (a calm room)",
    )
    args = parser.parse_args()
    client = redis.Redis(host="127.0.0.1", port=args.redis_port)
    text = "x" * args.text_bytes
    scripts = [(path, client.register_script(load_publish(path))) for path in args.scripts]
    per_call: dict[str, list[float]] = {path: [] for path, _ in scripts}
    serial = 0
    for index, (_, script) in enumerate(scripts):  # fill each room to its history size
        keys, argv = args_for(script.script, index, args.history_size, text, args.dedupe_ms)
        pipe = client.pipeline(transaction=False)
        for _ in range(args.history_size):
            serial += 1
            script(
                keys=[keys[0], f"{keys[1]}{serial}"], args=[*argv[:-1], str(serial)], client=pipe
            )
        pipe.execute()
    for _ in range(args.rounds):
        for index, (path, script) in enumerate(scripts):
            keys, argv = args_for(script.script, index, args.history_size, text, args.dedupe_ms)
            client.config_resetstat()
            for start in range(0, args.calls, 100):
                pipe = client.pipeline(transaction=False)
                for _ in range(min(100, args.calls - start)):
                    serial += 1  # a fresh nonce: accepted, stored, trimmed like a real send
                    nonce = str(serial)
                    script(
                        keys=[keys[0], f"{keys[1]}{nonce}"], args=[*argv[:-1], nonce], client=pipe
                    )
                pipe.execute()
            stats = client.info("commandstats")["cmdstat_evalsha"]
            per_call[path].append(round(stats["usec"] / stats["calls"], 2))
    for index, (path, _) in enumerate(scripts):
        for key in client.scan_iter(f"wc:{{cost{index}}}:*", count=1000):
            client.delete(key)
        print(
            json.dumps(
                {
                    "scripts": path,
                    "usec_per_call": per_call[path],
                    "median": statistics.median(per_call[path]),
                    "min": min(per_call[path]),
                }
            )
        )
    print(
        "; ".join(
            f"{Path(p).parent.name or p}: median {statistics.median(v)} µs, min {min(v)} µs"
            for p, v in per_call.items()
        ),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
