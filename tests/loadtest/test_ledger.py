"""The loss/duplicate/order accounting of the load tests (loadtest/_ledger.py), without sockets."""

from __future__ import annotations

from _ledger import (
    ACCEPTED,
    DUPLICATE,
    FIRST,
    LATE,
    OUT_OF_ORDER,
    OWN,
    PENDING,
    REFUSED,
    RESEND_ECHO,
    UNANSWERED,
    UNEXPECTED,
    Judgement,
    Member,
    RoomLedger,
)
from _wsproto import parse_id

S = 1_000_000_000  # ns
ACK, LOSS = 10 * S, 5 * S


def room(*names: str) -> tuple[RoomLedger, list[Member]]:
    ledger = RoomLedger("r")
    members = [Member(ledger, n) for n in names]
    for m in members:
        ledger.join(m)
    return ledger, members


def key(n: int) -> int:
    return parse_id(f"1700000000000-{n}")


def deliver(members: list[Member], seq: int, k: int, now: int, counts: Judgement) -> list[int]:
    return [m.receive(seq, k, now, counts) for m in members]


def test_every_member_gets_everything_nothing_missing() -> None:
    ledger, (a, b, c) = room("a", "b", "c")
    counts = Judgement()
    for i in range(5):
        seq = ledger.send(a, i * S)
        assert deliver([a, b, c], seq, key(i), i * S + 1000, counts) == [OWN, FIRST, FIRST]
    assert ledger.quiet()
    j = ledger.judge(20 * S, ACK, LOSS, counts=counts)
    assert (j.missing, j.unanswered, j.accepted) == (0, 0, 5)
    assert ledger.judged == 5


def test_a_missing_delivery_is_counted_once_after_the_loss_timeout() -> None:
    ledger, (a, b, c) = room("a", "b", "c")
    counts = Judgement()
    for i in range(3):
        seq = ledger.send(a, i * S)
        targets = [a, c] if i == 1 else [a, b, c]  # b never gets message 1
        deliver(targets, seq, key(i), i * S, counts)
    assert not ledger.quiet()
    # Not yet: the echo of message 2 came at 2 s, the loss timeout is 5 s.
    early = ledger.judge(3 * S, ACK, LOSS, counts=Judgement())
    assert early.missing == 0 and early.settled_upto == 0
    j = ledger.judge(10 * S, ACK, LOSS, counts=Judgement())
    assert j.missing == 1 and j.missing_by_member == {"b": 1}
    assert ledger.judge(20 * S, ACK, LOSS, counts=Judgement()).missing == 0  # counted once
    assert b.missing == 1
    # The straggler arriving after judgement is late, not a first copy.
    assert b.receive(1, key(1), 21 * S, counts) == LATE


def test_duplicates_and_order() -> None:
    ledger, (a, b) = room("a", "b")
    counts = Judgement()
    s0, s1 = ledger.send(a, 0), ledger.send(a, 1)
    assert b.receive(s0, key(0), 2, counts) == FIRST
    assert b.receive(s0, key(0), 3, counts) == DUPLICATE
    s2 = ledger.send(a, 4)
    assert b.receive(s2, key(5), 5, counts) == FIRST
    assert b.receive(s1, key(1), 6, counts) == OUT_OF_ORDER  # an older id after a newer one
    assert (b.duplicates, b.out_of_order, b.received) == (1, 1, 3)


def test_who_joined_later_expects_only_later_messages() -> None:
    ledger, (a,) = room("a")
    counts = Judgement()
    early = ledger.send(a, 0)
    late = Member(ledger, "late")
    ledger.join(late)  # its welcome: after `early` was sent
    later = ledger.send(a, S)
    deliver([a], early, key(0), 1, counts)
    assert late.receive(early, key(0), 2, counts) == UNEXPECTED  # delivered, never owed
    deliver([a], later, key(1), S + 1, counts)
    j = ledger.judge(20 * S, ACK, LOSS, counts=Judgement())
    assert j.missing == 1 and j.missing_by_member == {"late": 1}


def test_an_error_frame_settles_the_message_as_refused_not_lost() -> None:
    ledger, (a, b) = room("a", "b")
    counts = Judgement()
    s0 = ledger.send(a, 0)
    s1 = ledger.send(a, 1)  # refused by the rate limiter
    s2 = ledger.send(a, 2)
    a.refused()
    deliver([a, b], s0, key(0), 3, counts)
    deliver([a, b], s2, key(2), 4, counts)  # s2's echo: s1 will never be answered
    assert ledger.state[s1] == REFUSED and counts.refused == 1 and counts.unanswered == 0
    assert ledger.judge(20 * S, ACK, LOSS, counts=Judgement()).missing == 0


def test_a_message_without_echo_or_error_is_unanswered_after_the_ack_timeout() -> None:
    ledger, (a, _b) = room("a", "b")
    seq = ledger.send(a, 0)
    assert ledger.judge(5 * S, ACK, LOSS, counts=Judgement()).unanswered == 0
    assert ledger.state[seq] == PENDING
    j = ledger.judge(11 * S, ACK, LOSS, counts=Judgement())
    assert j.unanswered == 1 and ledger.state[seq] == UNANSWERED and j.missing == 0


def test_refusals_matching_every_waiting_message_settle_at_once() -> None:
    ledger, (a,) = room("a")
    seqs = [ledger.send(a, 0), ledger.send(a, 0)]
    a.refused()
    a.refused()
    j = ledger.judge(S, ACK, LOSS, counts=Judgement())
    assert [ledger.state[s] for s in seqs] == [REFUSED, REFUSED] and j.refused == 2
    assert ledger.quiet()


def test_resume_replay_and_resend_echo() -> None:
    """A sender loses its connection with a message in flight; the replay brings it back and
    the resend (same nonce) is answered with the original: no duplicate, no loss."""
    ledger, (a, b) = room("a", "b")
    counts = Judgement()
    s0 = ledger.send(a, 0)
    deliver([a, b], s0, key(0), 1, counts)
    s1 = ledger.send(a, 2)
    b.receive(s1, key(1), 3, counts)  # accepted; a's echo lost with the connection
    assert a.since() == ("1700000000000-0", False)
    assert ledger.unseen_accepted(a) == set()  # s1 is not known to be accepted yet
    assert a.prepare_resend() == [s1]
    assert a.receive(s1, key(1), 5, counts) == OWN  # the replay: accepted after all
    assert ledger.state[s1] == ACCEPTED
    assert a.receive(s1, key(1), 6, counts) == RESEND_ECHO  # the deduplicated resend
    assert a.duplicates == 0
    assert ledger.judge(20 * S, ACK, LOSS, counts=Judgement()).missing == 0


def test_resume_waits_for_what_was_missed() -> None:
    ledger, (a, b) = room("a", "b")
    counts = Judgement()
    s0 = ledger.send(a, 0)
    deliver([a, b], s0, key(0), 1, counts)
    s1 = ledger.send(a, 2)  # b is disconnected
    deliver([a], s1, key(1), 3, counts)
    b.resume_wait = ledger.unseen_accepted(b)
    assert b.resume_wait == {s1}
    assert b.since() == ("1700000000000-0", False)
    b.receive(s1, key(1), 4, counts)
    assert b.resume_wait == set()


def test_since_without_anything_received_asks_for_all_history() -> None:
    _, (a,) = room("a")
    assert a.since() == ("0-0", True)  # the server may answer with a gap frame: expected


def test_old_entries_are_dropped_once_judged() -> None:
    ledger, (a, b) = room("a", "b")
    counts = Judgement()
    for i in range(5000):
        seq = ledger.send(a, 0)
        deliver([a, b], seq, key(i), 0, counts)
    assert ledger.judge(10 * S, ACK, LOSS, counts=counts).missing == 0
    assert ledger.base == 5000 and len(ledger.state) == 0 and len(b.seen) == 0
    seq = ledger.send(a, 11 * S)
    assert seq == 5000
    assert b.receive(seq, key(5000), 11 * S, counts) == FIRST
