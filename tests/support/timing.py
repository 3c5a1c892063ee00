"""Every wait in the tests derives from one unit, scaled on slow machines by WEBCHAT_TEST_UNIT."""

import os

UNIT = float(os.environ.get("WEBCHAT_TEST_UNIT", "1"))


def seconds(n: float) -> float:
    return n * UNIT
