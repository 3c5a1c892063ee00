"""upgrade.py's pure part: the answer to the key (protocol.upgrade_problem checks the rest)."""

from webchat.upgrade import accept_key


def test_accept_key_is_rfc_6455s_example():
    # RFC 6455 section 1.3: the worked example of the opening handshake.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
