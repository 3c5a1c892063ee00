"""The production nginx.conf, parsed, rendered for a test's ports and run as a real nginx.

`parse` turns an nginx configuration into a tree of `Directive`s (static checks in
tests/unit/test_nginx_conf.py use it too); `render` rewrites only what must differ on a test
machine: where nginx listens, which instances it balances, and where it keeps its pid, logs,
cache and temporary files. Everything else (headers, timeouts, limits, cache rules) is the
production file's own, so a test through `NginxServer` tests the file that gets deployed.

`NginxServer(upstream_ports).start()` checks the rendered file with `nginx -t`, starts nginx
in the foreground as a child process and returns once its port accepts connections.
"""

from __future__ import annotations

import re
import resource
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp

from tests.support.servers import (
    ROOT,
    WebchatProcess,
    alive_and,
    free_port,
    require_binary,
    stop_process,
    wait_until,
)
from tests.support.timing import poll, seconds

NGINX_CONF = ROOT / "nginx.conf"
T = TypeVar("T")

# --- a small nginx configuration parser ------------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<punct>[{};])
    | (?P<quoted>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<word>(?:[^\s{};"'\\]|\\.)+)
    """,
    re.VERBOSE,
)


@dataclass
class Directive:
    """One directive: `name args...;` or `name args... { block }` (block is then a list)."""

    name: str
    args: list[str]  # raw tokens, quotes kept, so rendering reproduces them exactly
    block: list[Directive] | None = None
    line: int = 0

    @property
    def values(self) -> list[str]:
        """The arguments with their quotes removed."""
        return [_unquote(a) for a in self.args]

    def children(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def child(self, name: str) -> Directive:
        """The one child directive called `name`; fails if there is none or several."""
        found = self.children(name)
        assert len(found) == 1, f"expected one {name!r} in {self.name} (line {self.line})"
        return found[0]

    def walk(self) -> Iterator[Directive]:
        """This directive and every directive nested in it, depth first."""
        yield self
        for child in self.block or []:
            yield from child.walk()


@dataclass
class Config:
    """A whole configuration: the top level is an implicit block."""

    directives: list[Directive] = field(default_factory=list)

    @property
    def root(self) -> Directive:
        return Directive("main", [], self.directives)

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.root.walk() if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.find(name)
        assert len(found) == 1, f"expected exactly one {name!r}, found {len(found)}"
        return found[0]

    @property
    def servers(self) -> list[Directive]:
        """The virtual servers (`http { server { ... } }`; upstreams have `server`s too)."""
        return [d for d in self.one("http").children("server") if d.block is not None]

    @property
    def server(self) -> Directive:
        """The one named virtual server: the service (the default server only drops)."""
        named = [s for s in self.servers if _names(s) not in ([], ["_"])]
        assert len(named) == 1, f"expected one named server block in http, found {len(named)}"
        return named[0]

    @property
    def default_server(self) -> Directive:
        """The catch-all server (`server_name _`) for Hosts the service does not serve."""
        found = [s for s in self.servers if _names(s) == ["_"]]
        assert len(found) == 1, f"expected one default server in http, found {len(found)}"
        return found[0]

    def location(self, *args: str, server: Directive | None = None) -> Directive:
        """The `location` of the named server (or of `server`) whose arguments are exactly
        `args` (e.g. "=", "/ws")."""
        block = server or self.server
        found = [d for d in block.walk() if d.name == "location" and d.values == list(args)]
        assert len(found) == 1, f"expected one location {' '.join(args)}"
        return found[0]

    def text(self) -> str:
        return "".join(_render(self.directives, 0))


def _names(server: Directive) -> list[str]:
    return [name for d in server.children("server_name") for name in d.values]


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def parse(text: str) -> Config:
    """Parse nginx configuration text (comments dropped). Raises ValueError on bad nesting."""
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    line = 1
    start_line = 1
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"line {line}: cannot read {text[pos : pos + 20]!r}")
        token = match.group()
        pos = match.end()
        kind = match.lastgroup
        if kind in ("word", "quoted"):
            if not words:
                start_line = line
            words.append(token)
        elif kind == "punct":
            if token == ";":
                if not words:
                    raise ValueError(f"line {line}: empty directive")
                stack[-1].append(Directive(words[0], words[1:], None, start_line))
                words = []
            elif token == "{":
                if not words:
                    raise ValueError(f"line {line}: block without a directive")
                block: list[Directive] = []
                stack[-1].append(Directive(words[0], words[1:], block, start_line))
                stack.append(block)
                words = []
            else:
                if words or len(stack) == 1:
                    raise ValueError(f"line {line}: unexpected }}")
                stack.pop()
        line += token.count("\n")
    if words or len(stack) != 1:
        raise ValueError("unexpected end of file: unterminated directive or block")
    return Config(stack[0])


def _render(directives: Iterable[Directive], depth: int) -> Iterator[str]:
    pad = "    " * depth
    for d in directives:
        head = " ".join([d.name, *d.args])
        if d.block is None:
            yield f"{pad}{head};\n"
        else:
            yield f"{pad}{head} {{\n"
            yield from _render(d.block, depth + 1)
            yield f"{pad}}}\n"


def load(path: Path = NGINX_CONF) -> Config:
    return parse(path.read_text())


# --- rendering for a test ---------------------------------------------------------------------


def _set_one(block: list[Directive], name: str, args: list[str]) -> None:
    """Replace the single `name` directive in `block` (it must exist exactly once)."""
    found = [d for d in block if d.name == name]
    assert len(found) == 1, f"nginx.conf: expected exactly one {name!r} here, got {len(found)}"
    found[0].args = args


# The name tests reach nginx by (aiohttp sends `Host: 127.0.0.1:<port>`), in place of the
# production `server_name`.
TEST_SERVER_NAMES = ["127.0.0.1", "localhost"]


def make_certificate(prefix: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (openssl, as Debian ships it),
    for the TLS listeners of a test nginx; returns (certificate, key)."""
    cert, key = prefix / "tls.crt", prefix / "tls.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key),
            "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=seconds(20),
    )  # fmt: skip
    return cert, key


def render(
    config: Config,
    *,
    port: int,
    upstream_ports: Sequence[int],
    prefix: Path,
    per_ip_limit: int | None = None,
    tls_port: int | None = None,
) -> Config:
    """Rewrite `config` (in place) for a test: ports, upstreams, names and file paths;
    nothing else.

    Plain HTTP listeners go to `port`, TLS ones to `tls_port` (with a fresh self-signed
    certificate), and the named server answers to 127.0.0.1. The production file must keep
    the shape this expects (one `upstream webchat`, a default server and a named one, each
    listening on 80 and 443, one cache path, one `limit_conn`); if it changes, the
    assertions here name what moved.
    """
    main = config.directives
    _set_one(main, "user", ["root"])  # the test runs as root; www-data may not exist
    _set_one(main, "worker_processes", ["1"])  # the machine is shared; one is plenty
    _set_one(main, "pid", [str(prefix / "nginx.pid")])
    _set_one(main, "error_log", [str(prefix / "error.log"), "info"])
    # Never above the hard limit this process may raise it to (root may not, in a container).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = int(config.one("worker_rlimit_nofile").values[0])
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    _set_one(main, "worker_rlimit_nofile", [str(limit)])
    events = config.one("events")
    assert events.block is not None
    _set_one(events.block, "worker_connections", ["1024"])

    http = config.one("http")
    assert http.block is not None
    temp = prefix / "temp"
    for index, name in enumerate(("client_body", "proxy", "fastcgi", "uwsgi", "scgi")):
        (temp / name).mkdir(parents=True, exist_ok=True)
        directive = f"{name}_temp_path"
        if http.children(directive):
            _set_one(http.block, directive, [str(temp / name)])
        else:
            http.block.insert(index, Directive(directive, [str(temp / name)]))
    cache = config.one("proxy_cache_path")
    cache.args = [str(prefix / "cache"), *cache.args[1:]]
    access = config.one("access_log")
    access.args = [str(prefix / "access.log"), *access.args[1:]]

    upstream = config.one("upstream")
    assert upstream.block is not None
    servers = upstream.children("server")
    assert servers, "nginx.conf: the upstream lists no server"
    options = servers[0].args[1:]  # max_fails, fail_timeout: the production passive health
    first = upstream.block.index(servers[0])
    upstream.block[:] = [d for d in upstream.block if d.name != "server"]
    for offset, upstream_port in enumerate(upstream_ports):
        server = Directive("server", [f"127.0.0.1:{upstream_port}", *options])
        upstream.block.insert(first + offset, server)

    tls_port = tls_port or free_port()
    for server in config.servers:
        listens = server.children("listen")
        assert sorted(d.values[0] for d in listens) == ["443", "80"], "listen 80 and 443"
        for listen in listens:
            tls = listen.values[0] == "443"
            address = f"127.0.0.1:{tls_port if tls else port}"
            listen.args = [address, *listen.args[1:]]
    named = config.server
    named.child("server_name").args = list(TEST_SERVER_NAMES)
    cert, key = make_certificate(prefix)
    named.child("ssl_certificate").args = [str(cert)]
    named.child("ssl_certificate_key").args = [str(key)]
    if per_ip_limit is not None:
        config.one("limit_conn").args[1] = str(per_ip_limit)
    return config


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=seconds(1)):
            return True
    except OSError:
        return False


class NginxServer:
    """nginx in front of `upstream_ports`, on a free loopback port, for one test."""

    def __init__(
        self, upstream_ports: Sequence[int], *, per_ip_limit: int | None = None, tls: bool = False
    ):
        """With `tls`, `port`, `url` and `ws_url` are the TLS listener's (a self-signed
        certificate made by `render`), as at a deployment's front. Their host is `localhost`:
        nginx.conf refuses TLS handshakes without a server name it serves (SNI), and clients
        send none for an IP address."""
        plain_port, self.tls_port = free_port(), free_port()
        self.tls = tls
        self.port = self.tls_port if tls else plain_port
        self.upstream_ports = list(upstream_ports)
        self.dir = Path(tempfile.mkdtemp(prefix="webchat-nginx-"))
        self.conf_path = self.dir / "nginx.conf"
        self.error_log = self.dir / "error.log"
        self.access_log = self.dir / "access.log"
        self.binary = require_binary("nginx")
        config = render(
            load(),
            port=plain_port,
            upstream_ports=self.upstream_ports,
            prefix=self.dir,
            per_ip_limit=per_ip_limit,
            tls_port=self.tls_port,
        )
        self.conf_path.write_text(config.text())
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        if self.tls:
            return f"wss://localhost:{self.port}/ws"
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def _command(self, *extra: str) -> list[str]:
        # -e: the error log before the configuration is read (else /var/log/nginx/error.log).
        return [
            self.binary,
            "-p",
            f"{self.dir}/",
            "-c",
            str(self.conf_path),
            "-e",
            str(self.error_log),
            *extra,
        ]

    def check(self) -> str:
        """`nginx -t` on the rendered file; returns its report, fails with it if invalid."""
        result = subprocess.run(
            self._command("-t"),
            capture_output=True,
            text=True,
            timeout=seconds(10),
            check=False,
        )
        report = result.stderr + result.stdout
        assert result.returncode == 0, f"nginx -t failed:\n{report}\n{self.conf_path.read_text()}"
        return report

    def start(self) -> NginxServer:
        self.check()
        with (self.dir / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                self._command("-g", "daemon off;"),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(
                alive_and(self.proc, "nginx", self.log, lambda: _accepts(self.port)),
                seconds(10),
                f"nginx on port {self.port} to accept connections",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def log(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the master (fast shutdown: open WebSockets are cut), then reap it."""
        stop_process(self.proc)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# --- where a client landed ---------------------------------------------------------------------

_CONNECTED = re.compile(r"^webchat_connected_users (\S+)$", re.MULTILINE)


async def connected_users(session: aiohttp.ClientSession, server: WebchatProcess) -> int:
    """`webchat_connected_users` of one instance, read directly (not through nginx)."""
    timeout = aiohttp.ClientTimeout(total=seconds(5))
    async with session.get(server.url + "/metrics", timeout=timeout) as response:
        assert response.status == 200
        match = _CONNECTED.search(await response.text())
    assert match, "no webchat_connected_users in /metrics"
    return int(float(match[1]))


async def locate(
    session: aiohttp.ClientSession,
    servers: Sequence[WebchatProcess],
    connect: Callable[[], Awaitable[T]],
    timeout: float = 10,
) -> tuple[T, int]:
    """Connect one client through nginx; return it and the index of the instance it landed on.

    The instance whose connection count grew by one is the one; no other client may connect
    or leave meanwhile.
    """
    before = [await connected_users(session, s) for s in servers]
    client = await connect()

    async def landed() -> list[int]:
        after = [await connected_users(session, s) for s in servers]
        grown = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if a == b + 1]
        return grown if sum(after) == sum(before) + 1 and len(grown) == 1 else []

    grown = await poll(landed, timeout, f"one instance counting one more than {before}")
    return client, grown[0]
