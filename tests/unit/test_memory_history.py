"""broker/memory.py's pure parts: select_history and select_before (PROTOCOL.md's history
rules) and IdClock; base.rank_rooms (the room list's rule)."""

from __future__ import annotations

import random

import pytest

from webchat.broker.base import ROOM_ACTIVITY_SECONDS, Message, RoomInfo, rank_rooms
from webchat.broker.memory import IdClock, select_before, select_history
from webchat.protocol import parse_id


def msgs(*ids: str) -> list[Message]:
    return [Message(i, "r", "n", f"text {i}", int(i.split("-")[0]), None) for i in ids]


def ids(history) -> list[str]:  # type: ignore[no-untyped-def]
    return [m.id for m in history.messages]


# Ids chosen so that string order and numeric order differ (9 < 10, 2 < 10).
HELD = msgs("9-0", "9-2", "9-10", "10-0", "10-1", "100-0")


# --- without since: the newest `limit`, oldest first, never a gap --------------------------


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (1, ["100-0"]),
        (2, ["10-1", "100-0"]),
        (6, [m.id for m in HELD]),
        (500, [m.id for m in HELD]),
    ],
)
def test_newest_without_since(limit, expected):
    history = select_history(HELD, None, limit)
    assert ids(history) == expected
    assert history.gap is False


def test_empty_without_since():
    history = select_history([], None, 100)
    assert list(history.messages) == [] and history.gap is False


# --- with since -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("9-0", ["9-2", "9-10", "10-0", "10-1", "100-0"]),  # at the oldest: no gap
        ("9-2", ["9-10", "10-0", "10-1", "100-0"]),
        ("9-5", ["9-10", "10-0", "10-1", "100-0"]),  # between two ids
        ("9-10", ["10-0", "10-1", "100-0"]),  # numeric, not string, order
        ("10-0", ["10-1", "100-0"]),
        ("99-99", ["100-0"]),
        ("100-0", []),  # at the newest: nothing, no gap
        ("100-1", []),  # after the newest: nothing, no gap
        ("99999999999999999999-0", []),
    ],
)
def test_after_since(since, expected):
    history = select_history(HELD, since, 500)
    assert ids(history) == expected
    assert history.gap is False


@pytest.mark.parametrize("since", ["0-0", "1-0", "8-999"])
def test_since_older_than_oldest_is_a_gap_then_everything_held(since):
    history = select_history(HELD, since, 500)
    assert history.gap is True
    assert ids(history) == [m.id for m in HELD]


def test_since_on_empty_history_is_a_gap():
    history = select_history([], "1732650000000-0", 100)
    assert history.gap is True and list(history.messages) == []


def test_limit_with_since_takes_the_first_after_it():
    assert ids(select_history(HELD, "9-0", 2)) == ["9-2", "9-10"]
    gap = select_history(HELD, "1-0", 2)
    assert gap.gap is True and ids(gap) == ["9-0", "9-2"]


def test_result_is_a_copy():
    held = msgs("1-0", "2-0")
    history = select_history(held, None, 10)
    held.append(msgs("3-0")[0])
    assert ids(history) == ["1-0", "2-0"]


def test_matches_a_linear_scan():
    rng = random.Random(7)
    clock = IdClock()
    now = 1_000
    held = []
    for _ in range(300):
        now += rng.choice([0, 0, 1, 5])
        held.append(msgs(clock.next(now)[0])[0])
    keys = [parse_id(m.id) for m in held]
    for _ in range(300):
        ms, seq = rng.randint(990, now + 5), rng.randint(0, 3)
        since = f"{ms}-{seq}"
        limit = rng.randint(1, 50)
        history = select_history(held, since, limit)
        if (ms, seq) < keys[0]:
            assert history.gap and ids(history) == [m.id for m in held[:limit]]
        else:
            after = [m.id for m, k in zip(held, keys, strict=True) if k > (ms, seq)]
            assert not history.gap and ids(history) == after[:limit]


# --- IdClock --------------------------------------------------------------------------------


def test_ids_take_the_time_and_count_within_a_millisecond():
    clock = IdClock()
    assert clock.next(1000) == ("1000-0", 1000)
    assert clock.next(1000) == ("1000-1", 1000)
    assert clock.next(1000) == ("1000-2", 1000)
    assert clock.next(1001) == ("1001-0", 1001)


def test_ids_never_go_backwards_when_the_clock_does():
    clock = IdClock()
    assert clock.next(2000) == ("2000-0", 2000)
    # The wall clock stepped back: keep the last millisecond and count on, as Redis does.
    assert clock.next(1500) == ("2000-1", 2000)
    assert clock.next(1999) == ("2000-2", 2000)
    assert clock.next(2001) == ("2001-0", 2001)


def test_ids_are_strictly_increasing_and_unique():
    rng = random.Random(1)
    clock = IdClock()
    now = 1_732_650_000_000
    seen = []
    for _ in range(5000):
        now += rng.choice([-3, -1, 0, 0, 0, 1, 2, 50])
        seen.append(clock.next(now)[0])
    keys = [parse_id(i) for i in seen]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    for i in seen:
        parse_id(i)  # every id has the protocol's form


def test_ts_is_the_id_millisecond():
    clock = IdClock()
    for now in (5, 5, 3, 9):
        message_id, ts = clock.next(now)
        assert parse_id(message_id)[0] == ts


# --- before: a page of scroll-back ---------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "limit", "expected"),
    [
        ("100-0", 2, ["10-0", "10-1"]),  # the newest `limit` older than before, oldest first
        ("100-0", 500, ["9-0", "9-2", "9-10", "10-0", "10-1"]),
        ("10-0", 500, ["9-0", "9-2", "9-10"]),  # numeric order: 9-10 < 10-0
        ("9-10", 1, ["9-2"]),
        ("9-5", 10, ["9-0", "9-2"]),  # between two ids
        ("9-0", 10, []),  # nothing older than the oldest
        ("1-0", 10, []),
        ("0-0", 10, []),
        ("101-0", 1, ["100-0"]),  # after the newest: the newest
        ("9" * 20 + "-" + "9" * 20, 3, ["10-0", "10-1", "100-0"]),
    ],
)
def test_before(before, limit, expected):
    history = select_before(HELD, before, limit)
    assert ids(history) == expected
    assert history.gap is False


def test_paging_back_with_before_reaches_the_first_message():
    held = msgs(*(f"{1000 + n // 3}-{n % 3}" for n in range(300)))
    pages, before = [], held[-1].id
    shown = [held[-1].id]
    while True:
        page = ids(select_before(held, before, 50))
        pages.append(page)
        shown = page + shown
        if len(page) < 50:
            break
        before = page[0]
    assert shown == [m.id for m in held]
    assert [len(p) for p in pages] == [50, 50, 50, 50, 50, 49]


# --- the room list --------------------------------------------------------------------------

NOW = 1_732_650_000_000
DAY = ROOM_ACTIVITY_SECONDS * 1000


def test_rooms_with_members_or_a_message_in_the_last_24_hours():
    rooms = [
        RoomInfo("quiet", 0, NOW - DAY - 1),  # a message just over 24 h ago, nobody here
        RoomInfo("empty", 0, None),
        RoomInfo("recent", 0, NOW - DAY),
        RoomInfo("old-but-busy", 2, NOW - 10 * DAY),
        RoomInfo("no-messages", 1, None),
        RoomInfo("busiest", 5, NOW - 5),
        RoomInfo("b-tie", 2, NOW - 100),
        RoomInfo("a-tie", 2, NOW - 100),
    ]
    ranked = [r.room for r in rank_rooms(rooms, NOW, 200)]
    # Most members first, then the most recently active, then by name.
    assert ranked == ["busiest", "a-tie", "b-tie", "old-but-busy", "no-messages", "recent"]
    assert [r.room for r in rank_rooms(rooms, NOW, 2)] == ["busiest", "a-tie"]
    assert rank_rooms([], NOW, 200) == []
