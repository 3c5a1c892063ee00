"""The conformance suite's servers stop at once: no drain delay unless a test asks for one."""

from __future__ import annotations

import pytest

from tests.conftest import MakeServer
from tests.support.servers import WebchatProcess


@pytest.fixture
def make_server(make_server: MakeServer) -> MakeServer:
    """The shared `make_server`, with `--drain-delay 0` first so a test's own flag wins."""

    def make(*args: str, **kwargs: object) -> WebchatProcess:
        return make_server("--drain-delay", "0", "--drain-spread", "0", *args, **kwargs)

    return make
