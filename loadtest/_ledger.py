"""Loss, duplicate and order accounting for the load tests: what a room's senders sent, who got it.

Pure (no socket, no gevent, no locust), unit-tested in tests/loadtest/. One process holds every
sender and receiver of a room (the locustfile makes sure of it, also in distributed mode), so a
`RoomLedger` here knows everything the room's senders sent:

- A sender takes the next room sequence number for each message (`send`). The message is
  *accepted* when the sender gets it back (PROTOCOL.md: the echo is the acknowledgement),
  *refused* when the server answered an error frame instead, and *unanswered* when neither came
  within the ack timeout (or a later message of the same sender was echoed first: the server
  answers one sender's frames in order).
- A `Member` (one logical chat client: its socket may drop and resume with `since`) expects
  every message accepted from its first welcome on, that is every sequence number taken after
  it: the server had attached it before sending the welcome. `receive` classifies each
  delivery (first copy, duplicate, out of order by id, ...) at a few operations per call.
- `RoomLedger.judge` settles the messages whose fate is known and whose deliveries had time to
  arrive (`loss_timeout` after the echo) and counts, per member, the accepted ones it never got:
  byte masks and one big-integer AND per member, not a loop per delivery.
"""

from __future__ import annotations

import contextlib
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from _wsproto import ID_SEQ_BITS, ID_SEQ_MASK

PENDING, ACCEPTED, REFUSED, UNANSWERED = 0, 1, 2, 3
_ACCEPTED_ONLY = bytes(1 if i == ACCEPTED else 0 for i in range(256))

# Member.receive results.
FIRST = 0  # a first copy, in order: a delivery
DUPLICATE = 1  # a second copy of a message this member already had
OUT_OF_ORDER = 2  # a first copy whose id is older than one received before
RESEND_ECHO = 3  # the server's answer to a resent nonce it had already accepted: expected
LATE = 4  # a message already judged (counted missing, or a duplicate of a judged one)
UNEXPECTED = 5  # sent before this member joined: delivered, but nobody expected it
OWN = 6  # a first copy, in order, of this member's own message: a delivery and its echo

COMPACT_AT = 4096  # drop settled entries once this many have accumulated


@dataclass
class Judgement:
    """What one `judge` call settled."""

    missing: int = 0  # (member, accepted message) pairs never delivered
    unanswered: int = 0  # messages that got neither an echo nor an error
    refused: int = 0  # messages the server refused with an error frame
    accepted: int = 0
    settled_upto: int = 0
    missing_by_member: dict[str, int] = field(default_factory=dict)


class RoomLedger:
    """One room: every message its senders sent, by room sequence number, and its members."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.base = 0  # sequence number of index 0 in the arrays below
        self.sent_ns = array("q")
        self.ack_ns = array("q")
        self.key = array("q")  # the accepted message's id (parse_id), 0 until accepted
        self.state = bytearray()
        self.owner: list[Member | None] = []
        self.members: list[Member] = []
        self.senders: set[Member] = set()
        self.judged = 0  # every sequence number below this is settled and judged
        self.newest_key = 0  # id of the newest accepted message (for a first `since`)

    @property
    def next_seq(self) -> int:
        return self.base + len(self.state)

    def send(self, owner: Member, now_ns: int) -> int:
        """A new message from `owner`: its sequence number (the text's marker carries it)."""
        seq = self.base + len(self.state)
        self.sent_ns.append(now_ns)
        self.ack_ns.append(0)
        self.key.append(0)
        self.state.append(PENDING)
        self.owner.append(owner)
        self.senders.add(owner)
        owner.pending.append(seq)
        return seq

    def sent_at(self, seq: int) -> int:
        return self.sent_ns[seq - self.base]

    def join(self, member: Member) -> None:
        member.start = member.base = self.next_seq
        member.seen = bytearray()
        if member not in self.members:
            self.members.append(member)

    def leave(self, member: Member) -> None:
        """Stop expecting deliveries for `member` (what is unsettled is not judged for it)."""
        if member in self.members:
            self.members.remove(member)

    def _settle_sender(
        self, member: Member, upto: int, counts: Judgement, keep_resent: bool = False
    ) -> None:
        """Settle `member`'s pending messages older than `upto`: refused or unanswered.

        `keep_resent`: leave messages resent after a reconnect pending; the resend itself will
        be answered (an echo of the original if the first copy was accepted after all).
        """
        pending = member.pending
        state = self.state
        base = self.base
        kept: list[int] = []
        while pending and pending[0] < upto:
            seq = pending.popleft()
            if state[seq - base] != PENDING:
                continue
            if keep_resent and seq in member.resent:
                kept.append(seq)
                continue
            if member.refusals > 0:
                member.refusals -= 1
                state[seq - base] = REFUSED
                counts.refused += 1
            else:
                state[seq - base] = UNANSWERED
                counts.unanswered += 1
        pending.extendleft(reversed(kept))

    def accept(self, member: Member, seq: int, key: int, now_ns: int, counts: Judgement) -> None:
        """`member` got its own message `seq` back: the server accepted it."""
        i = seq - self.base
        if i < 0 or self.state[i] != PENDING:
            return  # settled already (timed out), or a resend's second answer
        self.state[i] = ACCEPTED
        self.ack_ns[i] = now_ns
        self.key[i] = key
        if key > self.newest_key:
            self.newest_key = key
        # One sender's frames are answered in order: older ones still pending never will be.
        self._settle_sender(member, seq, counts, keep_resent=True)
        with contextlib.suppress(ValueError):
            member.pending.remove(seq)

    def expire(self, now_ns: int, ack_timeout_ns: int, counts: Judgement) -> None:
        """Messages unanswered for longer than the ack timeout are settled as such."""
        for member in self.senders:
            if not member.pending:
                continue
            oldest = member.pending[0]
            if self.sent_ns[oldest - self.base] + ack_timeout_ns <= now_ns:
                limit = now_ns - ack_timeout_ns
                upto = oldest
                while upto < self.next_seq and self.sent_ns[upto - self.base] <= limit:
                    upto += 1
                self._settle_sender(member, upto, counts)
            elif len(member.pending) <= member.refusals:
                # As many refusals as messages still waiting: all of them were refused.
                self._settle_sender(member, self.next_seq, counts)

    def horizon(self, now_ns: int, loss_timeout_ns: int, final: bool = False) -> int:
        """The first sequence number whose deliveries cannot be judged yet."""
        state, ack = self.state, self.ack_ns
        i = self.judged - self.base
        n = len(state)
        while i < n:
            s = state[i]
            if s == PENDING:
                break
            if s == ACCEPTED and not final and ack[i] + loss_timeout_ns > now_ns:
                break
            i += 1
        return self.base + i

    def judge(
        self,
        now_ns: int,
        ack_timeout_ns: int,
        loss_timeout_ns: int,
        final: bool = False,
        counts: Judgement | None = None,
    ) -> Judgement:
        """Settle what can be settled and count the deliveries that never came.

        `final` (the senders have stopped and the caller waited for stragglers): every accepted
        message is judged now, and pending ones count as unanswered.
        """
        counts = counts or Judgement()
        self.expire(now_ns, -1 if final else ack_timeout_ns, counts)
        lo = self.judged
        hi = self.horizon(now_ns, loss_timeout_ns, final)
        counts.settled_upto = hi
        if hi <= lo:
            return counts
        accepted = self.state[lo - self.base : hi - self.base].translate(_ACCEPTED_ONLY)
        counts.accepted += accepted.count(1)
        for member in self.members:
            m_lo = max(lo, member.start)
            if m_lo < hi:
                want = int.from_bytes(accepted[m_lo - lo :], "little")
                got = member.seen[m_lo - member.base : hi - member.base]
                missing = (want & ~int.from_bytes(got, "little")).bit_count()
                if missing:
                    member.missing += missing
                    counts.missing += missing
                    counts.missing_by_member[member.name] = missing
            member.forget_below(hi)
        self.judged = hi
        if hi - self.base >= COMPACT_AT:
            self._compact(hi)
        return counts

    def _compact(self, upto: int) -> None:
        k = upto - self.base
        del self.sent_ns[:k], self.ack_ns[:k], self.key[:k], self.state[:k], self.owner[:k]
        self.base = upto

    def unseen_accepted(self, member: Member) -> set[int]:
        """Accepted messages `member` expects and has not received (what a resume must bring)."""
        out = set()
        # Below member.base everything is judged already: delivered, or counted missing.
        for seq in range(max(member.start, member.base, self.base), self.next_seq):
            if self.state[seq - self.base] == ACCEPTED and not member.has(seq):
                out.add(seq)
        return out

    def key_before(self, seq: int) -> int:
        """Id of the newest accepted message sent before `seq`, or 0."""
        for i in range(min(seq, self.next_seq) - 1 - self.base, -1, -1):
            if self.state[i] == ACCEPTED:
                return self.key[i]
        return 0

    def quiet(self, members: Iterable[Member] | None = None) -> bool:
        """Nothing pending, and every member has every accepted message it expects."""
        base = self.base
        if PENDING in self.state[self.judged - base :]:
            return False
        for member in self.members if members is None else members:
            if self.unseen_accepted_count(member, self.judged):
                return False
        return True

    def unseen_accepted_count(self, member: Member, lo: int) -> int:
        lo = max(lo, member.start, member.base)
        hi = self.next_seq
        if lo >= hi:
            return 0
        want = int.from_bytes(self.state[lo - self.base :].translate(_ACCEPTED_ONLY), "little")
        got = int.from_bytes(member.seen[lo - member.base : hi - member.base], "little")
        return (want & ~got).bit_count()


class Member:
    """One logical chat client of a room. Its connection may come and go; this stays."""

    __slots__ = (
        "base",
        "duplicates",
        "last_key",
        "late",
        "ledger",
        "missing",
        "name",
        "out_of_order",
        "pending",
        "received",
        "refusals",
        "resent",
        "resume_wait",
        "seen",
        "start",
    )

    def __init__(self, ledger: RoomLedger, name: str) -> None:
        self.ledger = ledger
        self.name = name
        self.start = 0  # first sequence number this member expects
        self.base = 0  # sequence number of seen[0]
        self.seen = bytearray()
        self.last_key = 0  # id of the newest message received, for order and `since`
        self.pending: deque[int] = deque()  # own messages sent, not yet answered, oldest first
        self.refusals = 0  # error frames not yet matched to a pending message
        self.resent: set[int] = set()  # own messages resent after a reconnect
        self.resume_wait: set[int] | None = None  # what a resume still has to bring
        self.received = self.duplicates = self.out_of_order = self.missing = self.late = 0

    def has(self, seq: int) -> bool:
        i = seq - self.base
        return 0 <= i < len(self.seen) and self.seen[i] == 1

    def forget_below(self, seq: int) -> None:
        k = seq - self.base
        if k > 0:
            del self.seen[:k]
            self.base = seq
            if self.resent:
                self.resent = {s for s in self.resent if s >= seq}

    def receive(self, seq: int, key: int, now_ns: int, counts: Judgement) -> int:
        """Classify one message frame of this room (see the module constants)."""
        ledger = self.ledger
        if seq < self.start or seq - ledger.base >= len(ledger.state):
            if key > self.last_key:
                self.last_key = key
            return UNEXPECTED
        i = seq - self.base
        seen = self.seen
        if i < 0:
            if seq in self.resent:
                return RESEND_ECHO
            self.late += 1
            return LATE
        if i < len(seen):
            if seen[i]:
                if seq in self.resent:
                    return RESEND_ECHO
                self.duplicates += 1
                return DUPLICATE
        else:
            seen.extend(bytes(i + 1 - len(seen)))
        seen[i] = 1
        self.received += 1
        own = ledger.owner[seq - ledger.base] is self
        if own:
            ledger.accept(self, seq, key, now_ns, counts)
        wait = self.resume_wait
        if wait is not None:
            wait.discard(seq)
        if key <= self.last_key:
            self.out_of_order += 1
            return OUT_OF_ORDER
        self.last_key = key
        return OWN if own else FIRST

    def since(self) -> tuple[str, bool]:
        """The `since` for a resume, and whether the server may answer it with a `gap` frame.

        The newest id received, or else the newest accepted before this member joined. With
        neither, `0-0`: the server replays all the room's history after a `gap` frame (it cannot
        know that nothing older existed); what was sent before the member joined is ignored.
        """
        key = self.last_key or self.ledger.key_before(self.start)
        if not key:
            return "0-0", True
        return f"{key >> ID_SEQ_BITS}-{key & ID_SEQ_MASK}", False

    def refused(self) -> None:
        self.refusals += 1

    def prepare_resend(self) -> list[int]:
        """Own messages still waiting for an answer, to resend with the same nonce."""
        self.refusals = 0  # errors answered frames of the old connection, all resent now
        self.resent.update(self.pending)
        return list(self.pending)
