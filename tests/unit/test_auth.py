"""Authenticated mode's pure parts: claim rules, the rooms claim, where a token is found, the
presence member of a user, the frames that carry users, refresh frames and `webchat token`."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from webchat.auth import (
    AuthError,
    Identity,
    RoomGrant,
    Verifier,
    bearer_token,
    identity_from_claims,
)
from webchat.broker.base import Draft, Message
from webchat.config import Config
from webchat.protocol import (
    ConnectParams,
    ProtocolError,
    RefreshRequest,
    encode_presence,
    encode_refreshed,
    encode_welcome,
    member_key,
    member_name,
    member_user,
    message_dict,
    parse_client_frame,
    parse_connect_params,
    with_identity,
)
from webchat.tokens import issue, main, parse_ttl

SECRET = b"0123456789abcdef0123456789abcdef"


def refused(claims: dict[str, object]) -> AuthError:
    with pytest.raises(AuthError) as info:
        identity_from_claims(claims)
    assert info.value.reason == "bad_claims"
    return info.value


def test_claims_make_an_identity():
    identity = identity_from_claims({"sub": "u-1", "name": " Alice ", "exp": 1.9e9, "rooms": []})
    assert identity == Identity("u-1", "Alice", 1_900_000_000, RoomGrant(frozenset(), ()))
    assert not identity.allows("lobby")
    assert identity_from_claims({"sub": "u-1", "exp": 5}).rooms is None


@pytest.mark.parametrize(
    ("sub", "name"),
    [
        ("alice", "alice"),
        ("3f1c2a9e-1b6f-4a57-9c1e-8d0f3b2a7c64", "3f1c2a9e-1b6f-4a57-9c1e-8d0f3b2a"),  # cut at 32
        ("  bob  ", "bob"),
    ],
)
def test_the_name_defaults_to_the_sub(sub, name):
    assert identity_from_claims({"sub": sub, "exp": 1}).name == name


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({"exp": 1}, "sub"),
        ({"sub": "", "exp": 1}, "1-128"),
        ({"sub": "x" * 129, "exp": 1}, "1-128"),
        ({"sub": 7, "exp": 1}, "sub"),
        ({"sub": "a\ud800", "exp": 1}, "sub"),
        ({"sub": "a", "exp": "soon"}, "exp"),
        ({"sub": "a", "exp": True}, "exp"),
        ({"sub": "a", "exp": 1, "name": ""}, "empty"),
        ({"sub": "a", "exp": 1, "name": "x" * 33}, "at most 32"),
        ({"sub": "a", "exp": 1, "name": "a\u200bb"}, "format"),
        ({"sub": "a", "exp": 1, "name": ["a"]}, "string"),
        ({"sub": "\u200b", "exp": 1}, "add a name claim"),
        ({"sub": "a", "exp": 1, "rooms": None}, "list"),
        ({"sub": "a", "exp": 1, "rooms": "lobby"}, "list"),
        ({"sub": "a", "exp": 1, "rooms": ["ok", 3]}, "non-string"),
        ({"sub": "a", "exp": 1, "rooms": ["a*b"]}, "'a*b'"),
        ({"sub": "a", "exp": 1, "rooms": ["**"]}, "'**'"),
        ({"sub": "a", "exp": 1, "rooms": ["x" * 65]}, "each entry"),
    ],
)
def test_bad_claims_say_what_is_wrong(claims, says):
    assert says in refused(claims).message


def test_the_rooms_claim_names_and_prefixes():
    grant = RoomGrant.parse(["lobby", "team-*", "a*"])
    assert grant.allows("lobby") and not grant.allows("lobby2") and not grant.allows("lobb")
    assert grant.allows("team-") and grant.allows("team-red") and not grant.allows("team")
    assert grant.allows("a") and grant.allows("abc") and not grant.allows("b")
    everything = RoomGrant.parse(["*"])
    assert everything.allows("x") and everything.allows("lobby")
    assert not RoomGrant.parse([]).allows("lobby")


def test_where_a_token_is_found():
    assert bearer_token("Bearer abc", None) == "abc"
    assert bearer_token("bearer   abc ", None) == "abc"
    assert bearer_token(None, "abc") == "abc"
    for header, query, reason in (
        (None, None, "missing"),
        (None, "", "missing"),
        ("Basic YTpi", None, "malformed"),
        ("Bearer", None, "malformed"),
        ("Bearer abc", "abc", "malformed"),
    ):
        with pytest.raises(AuthError) as info:
            bearer_token(header, query)
        assert info.value.reason == reason
        assert "abc" not in info.value.message  # a token is never repeated


def test_a_user_is_one_member_per_display_name():
    assert member_key("alice", None) == "alice"
    one, other = member_key("Sam", "u-1"), member_key("Sam", "u-2")
    assert one != other and member_name(one) == member_name(other) == "Sam"
    assert (member_user(one), member_user("alice")) == ("u-1", None)
    assert member_user(member_key("Sam", "odd\x1fsub")) == "odd\x1fsub"  # split at the first
    assert sorted([member_key("Bob", "z"), member_key("Amy", "y")])[0].startswith("Amy")


def test_authenticated_params_ignore_name_and_key():
    query = {"room": "r", "name": "", "key": "bad key"}
    with pytest.raises(ProtocolError):
        parse_connect_params(query)
    params = with_identity(parse_connect_params(query, anonymous=False), "Alice", "u-1")
    assert (params.room, params.name, params.user) == ("r", "Alice", "u-1")
    assert params.member == member_key("Alice", "u-1")
    assert params.holder == with_identity(ConnectParams("x", "y", None), "Z", "u-1").holder
    assert params.holder != with_identity(ConnectParams("x", "y", None), "Z", "u-2").holder
    assert "u-1" not in params.holder


def test_frames_carry_users_in_authenticated_mode():
    members = [member_key("Sam", "u-1"), member_key("Sam", "u-2")]
    welcome = json.loads(encode_welcome("r", members[0], members, 2, {}))
    assert (welcome["name"], welcome["user"]) == ("Sam", "u-1")
    assert (welcome["members"], welcome["users"]) == (["Sam", "Sam"], ["u-1", "u-2"])
    anonymous = json.loads(encode_welcome("r", "amy", ["amy"], 1, {}))
    assert "user" not in anonymous and "users" not in anonymous
    assert json.loads(encode_presence("r", "join", members[1])) == {
        "type": "presence", "room": "r", "event": "join", "name": "Sam", "user": "u-2",
    }  # fmt: skip
    assert "user" not in json.loads(encode_presence("r", "join", "amy"))
    message = Message("1-0", "r", "Sam", "hi", 1, None, user="u-2")
    assert message_dict(message)["user"] == "u-2"
    assert "user" not in message_dict(Message("1-0", "r", "amy", "hi", 1, None))
    assert json.loads(encode_refreshed(1_900_000_000)) == {
        "type": "refreshed",
        "exp": 1_900_000_000,
    }


def test_a_nonce_belongs_to_the_user_not_the_name():
    assert Draft("Sam", "t", "n").sender == "Sam"
    assert Draft("Sam", "t", "n", user="u-1").sender == Draft("Samuel", "t", "n", user="u-1").sender
    assert Draft("Sam", "t", "n", user="Sam").sender != Draft("Sam", "t", "n").sender


def test_refresh_frames():
    request = parse_client_frame('{"type": "refresh", "token": "a.b.c"}', 100)
    assert request == RefreshRequest("a.b.c") and "a.b.c" not in repr(request)
    for frame in (
        '{"type": "refresh"}',
        '{"type": "refresh", "token": 5}',
        '{"type": "refresh", "token": ""}',
    ):
        with pytest.raises(ProtocolError) as info:
            parse_client_frame(frame, 100)
        assert info.value.code == "bad_message"
    with pytest.raises(ProtocolError) as info:
        parse_client_frame('{"type": "refreshed"}', 100)
    assert info.value.code == "bad_type" and "'refresh'" in info.value.message


@pytest.mark.parametrize(
    ("raw", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("1h", 3600), (" 7D ", 604800)]
)
def test_ttls(raw, seconds):
    assert parse_ttl(raw) == seconds


@pytest.mark.parametrize("raw", ["0", "1w", "-1h", "soon", "", "1.5h"])
def test_bad_ttls(raw):
    with pytest.raises(ValueError, match="lifetime"):
        parse_ttl(raw)


def test_issued_tokens_carry_the_claims():
    token = issue(SECRET, "u-1", name="Ann", rooms=["team-*"], ttl=60, audience="a", issuer="i")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="a", issuer="i")
    assert claims["exp"] - claims["iat"] == 60 and abs(claims["iat"] - time.time()) < 5
    assert (claims["sub"], claims["name"], claims["rooms"]) == ("u-1", "Ann", ["team-*"])
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    bare = jwt.decode(issue(SECRET, "u-2"), SECRET, algorithms=["HS256"])
    assert set(bare) == {"sub", "iat", "exp"}
    with pytest.raises(ValueError, match="name"):
        issue(SECRET, "u-1", name="a\nb")


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--sub", "a"], {}, "give --auth-secret-file or set AUTH_SECRET_FILE"),
        (["--sub", "a"], {"AUTH_JWKS_URL": "https://x/j"}, "identity provider signs"),
        (["--sub", "a", "--auth-secret-file", "/nonexistent"], {}, "cannot read"),
        (["--sub", "a", "--ttl", "soon"], {"AUTH_SECRET_FILE": "{secret}"}, "lifetime"),
        (["--sub", "a", "--rooms", "a b"], {"AUTH_SECRET_FILE": "{secret}"}, "rooms claim"),
        (["--sub", "", "--name", "x"], {"AUTH_SECRET_FILE": "{secret}"}, "sub claim"),
        (["--name", "x"], {"AUTH_SECRET_FILE": "{secret}"}, "--sub"),
        (["--sub", "a", "--nope"], {"AUTH_SECRET_FILE": "{secret}"}, "--nope"),
    ],
)
def test_webchat_token_refusals_are_one_line(args, env, says, tmp_path, capsys):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    env = {k: v.format(secret=secret) for k, v in env.items()}
    status = main(args, env)
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.startswith("webchat token: error: ") and err.count("\n") == 1 and says in err, err


def test_webchat_token_prints_a_token(tmp_path, capsys):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    env = {"AUTH_SECRET_FILE": str(secret), "AUTH_AUDIENCE": "chat"}
    assert main(["--sub", "u-1", "--rooms", "lobby, team-*", "--ttl", "5m"], env) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="chat")
    assert claims["rooms"] == ["lobby", "team-*"] and claims["exp"] - claims["iat"] == 300


@pytest.mark.parametrize(
    "token",
    [
        "nodots",
        "not.a-jwt",
        "W10.e30.c2ln",  # the header is a JSON array
        "eyJhbGciOiJIUzI1NiJ9.!!!.c2ln",  # a header, then no payload
        "eyJhbGciOiJIUzI1NiJ9.e30.c2ln=",  # a padded signature of a length padding cannot have
        "x" * 9000,
    ],
)
async def test_malformed_tokens(token, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    with pytest.raises(AuthError) as info:
        await Verifier(Config(auth_secret_file=str(secret))).verify(token)
    assert info.value.reason == "malformed", info.value.message
