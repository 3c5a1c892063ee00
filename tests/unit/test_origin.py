"""The origin rule on malformed Host and Origin values: an answer, never an exception (the
fuzzer found a 500 for `Host: 1[27.0.0.1:8080`: urlsplit refuses an unbalanced '[')."""

from __future__ import annotations

import pytest

from webchat.web import origin_allowed


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "chat.example", True),
        ("https://chat.example", "chat.example", True),
        ("https://chat.example:443", "chat.example", True),
        ("https://[::1]:8080", "[::1]:8080", True),
        ("https://q27.0.0.1:8080", "1[27.0.0.1:8080", False),
        ("https://1[27.0.0.1:8080", "1[27.0.0.1:8080", True),  # the same text: the same host
        ("https://1[27.0.0.1:8080", "127.0.0.1:8080", False),
        ("https://chat.example", "[chat.example", False),
        ("null", "chat.example", False),
    ],
)
def test_origin_rule_answers_malformed_values(origin, host, allowed):
    assert origin_allowed(origin, host, ()) is allowed
