"""collector.due: when closed sockets call for a full garbage collection."""

from __future__ import annotations

from webchat.collector import due


def test_a_collection_is_due_after_the_minimum_of_closed_sockets_when_few_are_open():
    assert not due(closed=999, open_sockets=100, after=1000)
    assert due(closed=1000, open_sockets=100, after=1000)


def test_with_many_open_it_waits_for_a_quarter_of_them_to_close():
    # The pause grows with the sockets open: its cost per closed socket stays the same.
    assert not due(closed=2499, open_sockets=10_000, after=1000)
    assert due(closed=2500, open_sockets=10_000, after=1000)


def test_zero_means_never():
    assert not due(closed=10**9, open_sockets=0, after=0)
