"""upgrade.py's pure parts: the handshake check and the answer to the key."""

import pytest

from webchat.upgrade import accept_key, handshake_problem

VALID = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def test_accept_key_is_rfc_6455s_example():
    # RFC 6455 section 1.3: the worked example of the opening handshake.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"Upgrade": " WebSocket "},
        {"Connection": "keep-alive, Upgrade"},
        {"Sec-WebSocket-Version": "8"},  # a draft version aiohttp accepted too
    ],
)
def test_a_valid_handshake_has_no_problem(changes):
    assert handshake_problem({**VALID, **changes}) is None


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"Upgrade": None}, "Upgrade"),
        ({"Upgrade": "h2c"}, "Upgrade"),
        ({"Connection": None}, "Connection"),
        ({"Connection": "keep-alive"}, "Connection"),
        ({"Connection": "upgraded"}, "Connection"),  # a token, not a substring
        ({"Sec-WebSocket-Version": None}, "Version"),
        ({"Sec-WebSocket-Version": "14"}, "Version"),
        ({"Sec-WebSocket-Key": None}, "Key"),
        ({"Sec-WebSocket-Key": "not base64!"}, "Key"),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, "Key"),  # base64, but 5 bytes
    ],
)
def test_each_broken_rule_is_named(changes, named):
    headers = {k: v for k, v in {**VALID, **changes}.items() if v is not None}
    problem = handshake_problem(headers)
    assert problem is not None and named in problem, problem
