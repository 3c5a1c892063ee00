from tests.support.client import ChatClient


async def test_two_clients_chat(server, session):
    alice = await ChatClient.connect(session, server.ws_url, room="r", name="alice")
    bob = await ChatClient.connect(session, server.ws_url, room="r", name="bob")
    assert (await alice.expect("presence"))["name"] == "bob"
    await alice.send("hi", nonce="n1")
    echo = await alice.expect("message")
    got = await bob.expect("message")
    assert echo == got
    assert got["text"] == "hi" and got["nonce"] == "n1"
