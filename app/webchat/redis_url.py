"""`--redis-url` forms: one Redis, a Sentinel-watched master, or a Redis Cluster. Pure: no I/O.

    redis://[[user]:password@]host[:port][/db]          one Redis (rediss:// with TLS;
    unix://[[user]:password@]/path/to/socket[?db=N]     redis-py's query options allowed)
    redis+sentinel://[:password@]host:port[,host:port...]/SERVICE[/DB]
    redis+cluster://[:password@]host:port[,host:port...]

In the Sentinel form the hosts are Sentinels and the password is the data nodes' (`requirepass`
of the master and its replicas): the Sentinels themselves are reached without one. In the
Cluster form the hosts are seed nodes; the client learns the rest of the cluster from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote, urlsplit

SENTINEL: Final = "redis+sentinel"
CLUSTER: Final = "redis+cluster"

_SERVICE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")

Kind = Literal["single", "sentinel", "cluster"]


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a `--redis-url` names. `url` is the URL as given (the single form passes it on to
    redis-py as it is); `nodes` are the Sentinels or the cluster's seed nodes."""

    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    def describe(self) -> str:
        """The target without credentials, for logs."""
        if self.kind == "single":
            parts = urlsplit(self.url)
            host = parts.hostname or parts.path
            return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"
        hosts = ",".join(f"{_bracket(h)}:{p}" for h, p in self.nodes)
        if self.kind == "sentinel":
            return f"{SENTINEL}://{hosts}/{self.service}/{self.db}"
        return f"{CLUSTER}://{hosts}"

    @property
    def address(self) -> tuple[str | None, int | None]:
        """Host and port to name in traces: the first Sentinel or seed node, or the server."""
        if self.nodes:
            return self.nodes[0]
        parts = urlsplit(self.url)
        return parts.hostname, (parts.port or 6379) if parts.hostname else None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_redis_url(raw: str) -> RedisTarget:
    """The target a URL names; ValueError with one line saying what is wrong."""
    url = raw.strip()
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(
            f"expected a redis://, rediss://, unix://, {SENTINEL}:// or {CLUSTER}:// URL, "
            f"got {url!r}"
        )
    scheme = scheme.lower()
    if scheme in (SENTINEL, CLUSTER):
        return _multi(url, scheme)
    return _single(url)


def _single(url: str) -> RedisTarget:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ValueError(f"malformed URL {url!r}: {exc}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"expected a redis://, rediss://, unix://, {SENTINEL}:// or {CLUSTER}:// URL, "
            f"got {url!r}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"URL {url!r} has no host")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"URL {url!r} has no socket path")
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"database in {url!r} must be a number, got {db!r}")
    del port
    return RedisTarget("single", url, db=int(db) if db.isdigit() else 0)


def _multi(url: str, scheme: str) -> RedisTarget:
    kind: Kind = "sentinel" if scheme == SENTINEL else "cluster"
    what = "Sentinel" if kind == "sentinel" else "cluster seed node"
    rest = url.split("://", 1)[1]
    if "?" in rest or "#" in rest:
        raise ValueError(f"{scheme}:// URLs take no query or fragment, got {url!r}")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        if not colon or not secret:
            raise ValueError(f"expected :password@ before the hosts of {scheme}://, in {url!r}")
        username, password = unquote(user) or None, unquote(secret)
    if not hostlist:
        raise ValueError(f"{scheme}:// URL {url!r} names no {what}")
    nodes = tuple(_host_port(item, what, url) for item in hostlist.split(","))
    if kind == "cluster":
        if path.strip("/"):
            raise ValueError(f"a Redis Cluster has no databases: drop {'/' + path!r} from {url!r}")
        return RedisTarget(kind, url, nodes, username=username, password=password)
    segments = path.split("/") if slash else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise ValueError(f"expected /SERVICE after the Sentinels (the master's name), in {url!r}")
    if len(segments) > 2:
        raise ValueError(f"expected /SERVICE[/DB] after the Sentinels, got {'/' + path!r}")
    service = unquote(segments[0])
    if not _SERVICE.match(service):
        raise ValueError(
            f"Sentinel service name must be 1-128 letters, digits or ._-, got {service!r}"
        )
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(f"database in {url!r} must be a number, got {segments[1]!r}")
        db = int(segments[1])
    return RedisTarget(kind, url, nodes, service, db, username, password)


def _host_port(item: str, what: str, url: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon or not host:
        raise ValueError(f"each {what} needs host:port, got {item!r} in {url!r}")
    if not _HOST.match(host):
        raise ValueError(f"{item!r} is not host:port (in {url!r})")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port of {item!r} must be from 1 to 65535 (in {url!r})")
    return host.strip("[]"), int(port)
