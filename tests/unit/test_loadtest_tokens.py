"""loadtest/_tokens.py: the tokens Locust users connect with are ones the service accepts."""

from __future__ import annotations

import importlib.util
from argparse import Namespace
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from tests.support.servers import ROOT
from webchat.auth import identity_from_claims

SECRET = b"k" * 40


def load() -> ModuleType:
    """loadtest/_tokens.py, as Locust imports it (loadtest/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_tokens", ROOT / "loadtest" / "_tokens.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_users_get_tokens_the_service_accepts(tmp_path: Path):
    tokens_module = load()
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    options = Namespace(
        auth_secret_file=str(secret), auth_ttl=600.0, auth_audience="chat", auth_issuer="id"
    )
    tokens = tokens_module.Tokens.from_options(options)
    path = tokens_module.with_token("/ws?room=r&name=u-7", tokens, "u-7")
    token = parse_qs(urlsplit(path).query)["token"][0]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="chat", issuer="id")
    identity = identity_from_claims(claims)
    assert (identity.sub, identity.name) == ("u-7", "u-7")
    assert claims["exp"] - claims["iat"] == 600
    assert tokens.token_for("u-7") == token  # signed once per user
    assert tokens_module.with_token("/ws?room=r", None, "u-7") == "/ws?room=r"
    assert tokens_module.Tokens.from_options(Namespace(auth_secret_file="")) is None


@pytest.mark.parametrize(
    ("contents", "options", "says"),
    [
        (b"short", {}, "at least 32"),
        (None, {}, "cannot read"),
        (SECRET, {"auth_ttl": 0.0}, "--auth-ttl"),
    ],
)
def test_bad_token_options_name_the_option(tmp_path: Path, contents, options, says):
    secret = tmp_path / "secret"
    if contents is not None:
        secret.write_bytes(contents)
    given = Namespace(auth_secret_file=str(secret), **options)
    with pytest.raises(ValueError, match=says) as info:
        load().Tokens.from_options(given)
    assert str(info.value).startswith("--auth-")
