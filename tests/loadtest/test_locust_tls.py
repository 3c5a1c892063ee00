"""`locust -f loadtest --host https://...` through the production nginx.conf with TLS at the front.

The certificate is self-signed (made by the fixture with openssl): `--insecure` accepts it, and
without the flag the same run cannot connect, naming the certificate as the reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import MakeServer
from tests.support.nginx import NginxServer

ROOM_SIZE = 4


@pytest.fixture
def tls_front(make_server: MakeServer) -> Iterator[NginxServer]:
    server = make_server("--drain-delay", "0", "--drain-spread", "0")
    nginx = NginxServer([server.port], tls=True).start()
    yield nginx
    nginx.cleanup()


@pytest.mark.parametrize("broker", ["memory"], indirect=True)
def test_wss_through_nginx_with_a_self_signed_certificate(tls_front: NginxServer, locust) -> None:
    assert tls_front.url.startswith("https://")
    common = ["SmallRooms", "-u", str(ROOM_SIZE), "-r", "50", "--host", tls_front.url]
    common += ["--room-size", str(ROOM_SIZE), "--msg-rate", "4", "--loss-timeout", "1"]

    run = locust(*common, "--insecure", run_time=3).wait()
    assert run.returncode == 0, run.explain()
    assert run.failures == [], run.explain()
    assert run.requests("connect") == ROOM_SIZE
    sent = run.requests("ack")
    assert sent > 0 and run.requests("deliver") == sent * ROOM_SIZE, run.explain()

    refused = locust(*common, run_time=3).wait()
    assert refused.returncode == 1, refused.explain()
    assert refused.failed("connect") == ROOM_SIZE, refused.explain()
    assert all("CERTIFICATE_VERIFY_FAILED" in f["Error"] for f in refused.failures), (
        refused.explain()
    )
    assert refused.requests("deliver") == 0
