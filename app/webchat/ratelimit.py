"""Per-connection token bucket (PROTOCOL.md's rate limit). Pure: the caller passes the time."""

from __future__ import annotations


class TokenBucket:
    """`burst` tokens, full at creation, refilled at `rate` per second; one token per frame.

    It also counts rejections since the last accepted frame, so the connection can be closed
    (1008) on the 3 x burst-th one.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens", "rejected_in_a_row")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now
        self.rejected_in_a_row = 0

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the frame must not be processed."""
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.rejected_in_a_row += 1
        return False

    def accepted(self) -> None:
        """A message was accepted: abuse is counted afresh from here."""
        self.rejected_in_a_row = 0
