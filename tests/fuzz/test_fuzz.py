"""A short fuzzing run in `make test`, on each broker: generated and mutated frames and HTTP
requests against a live server, every answer checked against the oracle (oracle.py, from
PROTOCOL.md and RFC 6455), then the server checked: still serving, nothing logged at ERROR, no
connection or thread left behind.

The long run (100,000 frames and more) is `python -m tests.fuzz`; a failure names the seed of
its case, and WEBCHAT_FUZZ_SEED=<seed> replays this run.
"""

from __future__ import annotations

import os
import random

from tests.conftest import MakeServer
from tests.fuzz.__main__ import SERVER_FLAGS
from tests.fuzz.run import Target, fuzz

FRAMES = 4000
REQUESTS = 1000


async def test_fuzzed_frames_and_requests_get_the_protocols_answers(make_server: MakeServer):
    seed = int(os.environ.get("WEBCHAT_FUZZ_SEED") or random.randrange(2**32))
    server = make_server(*SERVER_FLAGS)
    assert server.proc is not None
    target = Target("127.0.0.1", server.port, server.proc.pid, server.log)
    report = await fuzz(target, seed, frames=FRAMES, requests=REQUESTS)
    assert report.frames >= FRAMES and report.requests >= REQUESTS
    # The run covered what it is for: answers of each kind, and the session enders.
    assert {1000, 1002, 1007, 1009} <= set(report.closes), report.summary()
    assert {101, 200, 400, 403, 404, 409, 426} <= set(report.statuses), report.summary()
    print(report.summary())
