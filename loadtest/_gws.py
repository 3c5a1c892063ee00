"""WebSocket connections on gevent for Locust: many sockets, one reading greenlet per process.

A Locust worker must take tens of thousands of deliveries per second on one core, so reading is
not done one greenlet per socket (a greenlet switch and a watcher per read) but by one `Mux`
greenlet per process: every socket is registered with a real epoll object (the original one;
gevent's patched `select` hides it), the greenlet waits on the epoll descriptor through gevent's
hub, and each wake-up reads every ready socket and cuts its frames with `_wsproto.FrameReader`.
Other greenlets (users, Locust's own) run between wake-ups.

Sockets are the original non-blocking ones too; TLS wraps them with gevent's `ssl` (the
original module's classes break once gevent has patched it), used non-blocking after the
handshake. The opening handshake runs in the caller's greenlet and waits cooperatively
(`wait_read`, `wait_write`). Writes never block: what the kernel does not take is kept and
flushed when epoll says the socket is writable, so two greenlets writing one socket cannot
interleave frames.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.monkey import get_original
from gevent.socket import wait_read, wait_write

from _wsproto import (
    FrameReader,
    UpgradeError,
    check_upgrade,
    close_frame,
    pong_frame,
    split_target,
    upgrade_request,
)

log = logging.getLogger("webchat.loadtest")

RawSocket: Any = get_original("socket", "socket")
Epoll: Any = get_original("select", "epoll")
EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = 0x1, 0x4, 0x8, 0x10
READ_SIZE = 65536  # below glibc's mmap threshold: each recv's buffer is a cheap malloc
MAX_OUT = 4 << 20  # a server that reads nothing for this long is a failure, not a buffer
WANT = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def tls_context(insecure: bool, ca_file: str | None) -> Any:
    """A client TLS context: the system's CAs (or `ca_file`), or none checked with `insecure`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # gevent's, under Locust
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_file:
        ctx.load_verify_locations(ca_file)
    else:
        ctx.load_default_certs()
    return ctx


class Target:
    """Where connections go: a base URL (`http(s)://` or `ws(s)://`) and its TLS settings."""

    def __init__(self, url: str, tls_ctx: Any = None) -> None:
        self.url = url
        _, self.host, self.port, self.tls, self.host_header = split_target(url)
        self.tls_ctx = tls_ctx if self.tls else None
        self._addresses: list[Any] = []
        self._resolved_at = 0.0
        self._next = 0

    def address(self) -> tuple[int, Any]:
        """One of the host's addresses (family, sockaddr), re-resolved once a minute."""
        if not self._addresses or time.monotonic() - self._resolved_at > 60:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self._addresses = [(family, addr) for family, _, _, _, addr in infos]
            self._resolved_at = time.monotonic()
        self._next += 1
        return self._addresses[self._next % len(self._addresses)]  # type: ignore[no-any-return]


class Mux:
    """Reads every registered connection from one greenlet; see the module docstring."""

    def __init__(self) -> None:
        self.epoll = Epoll()
        self.conns: dict[int, Conn] = {}
        self.greenlet = gevent.spawn(self._run)

    def add(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        self.conns[fd] = conn
        self.epoll.register(fd, EPOLLIN)

    def remove(self, conn: Conn) -> None:
        fd = conn.fd
        if self.conns.get(fd) is conn:
            del self.conns[fd]
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)

    def want_write(self, conn: Conn, on: bool) -> None:
        if self.conns.get(conn.fd) is conn:
            self.epoll.modify(conn.fd, EPOLLIN | EPOLLOUT if on else EPOLLIN)

    def _run(self) -> None:
        hub = gevent.get_hub()
        watcher = hub.loop.io(self.epoll.fileno(), 1)
        poll = self.epoll.poll
        conns = self.conns
        while True:
            hub.wait(watcher)  # level-triggered: returns at once while anything is ready
            for fd, events in poll(0, 1024):
                conn = conns.get(fd)
                if conn is None:
                    continue
                try:
                    if events & EPOLLOUT:
                        conn.flush()
                    if events & (EPOLLIN | EPOLLERR | EPOLLHUP):
                        conn.read_ready()
                except Exception as exc:  # a bug in a handler: lose that socket, not the reader
                    log.exception("load-test connection handler failed")
                    conn.lost(1006, f"client error: {exc!r}")

    def close(self) -> None:
        self.greenlet.kill(block=True)
        for conn in list(self.conns.values()):
            conn.abort()
        self.epoll.close()


class Conn(FrameReader):
    """One WebSocket client connection. Subclasses implement `on_text` and `on_lost`.

    `open()` (in the caller's greenlet) connects, does TLS and the upgrade, and registers the
    socket with the Mux; frames that came with the upgrade answer are fed at once.
    """

    def __init__(self, mux: Mux) -> None:
        super().__init__()
        self.mux = mux
        self.sock: Any = None
        self.fd = -1
        self.out = bytearray()
        self.tls = False
        self.closing = False  # we closed it on purpose: its end is no news
        self.ended = False

    def open(self, target: Target, path: str, timeout: float) -> None:
        """Connect and upgrade; raises OSError, ssl.SSLError, UpgradeError or TimeoutError."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no upgrade within {timeout:g}s")
            return remaining

        family, addr = target.address()
        sock = RawSocket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(
                    err, f"connect to {target.host}:{target.port}: {errno.errorcode[err]}"
                )
            _wait(wait_write, sock, left())
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(
                    err, f"connect to {target.host}:{target.port}: {errno.errorcode[err]}"
                )
            if target.tls_ctx is not None:
                sock = target.tls_ctx.wrap_socket(
                    sock, server_hostname=target.host, do_handshake_on_connect=False
                )
                self.tls = True
                sock.settimeout(left())  # gevent's socket: waits cooperatively
                try:
                    sock.do_handshake()
                except TimeoutError:
                    raise TimeoutError(f"no TLS handshake within {timeout:g}s") from None
                sock.settimeout(0.0)  # from here on non-blocking, like the plain sockets
            request, key = upgrade_request(target.host_header, path)
            view = memoryview(request)
            while view:
                try:
                    view = view[sock.send(view) :]
                except WANT:
                    _wait(wait_write, sock, left())
            head = b""
            while (end := head.find(b"\r\n\r\n")) < 0:
                if len(head) > 16384:
                    raise UpgradeError("upgrade answer too long")
                try:
                    chunk = sock.recv(READ_SIZE)
                except ssl.SSLWantWriteError:
                    _wait(wait_write, sock, left())
                    continue
                except WANT:
                    _wait(wait_read, sock, left())
                    continue
                if not chunk:
                    raise UpgradeError(f"connection closed during the upgrade: {head[:80]!r}")
                head += chunk
            check_upgrade(head[:end], key, head[end + 4 :])
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        self.mux.add(self)
        rest = head[end + 4 :]
        if rest:
            self.feed(rest, time.monotonic_ns())

    # --- reading (from the Mux greenlet) ------------------------------------------------

    def read_ready(self) -> None:
        sock = self.sock
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except WANT:
                return
            except OSError as exc:
                self.lost(1006, f"connection lost: {exc}")
                return
            if not data:
                self.lost(1006, "connection closed without a close frame")
                return
            self.feed(data, time.monotonic_ns())
            # TLS may hold decrypted bytes the kernel no longer reports as readable.
            if self.ended or not self.tls or not sock.pending():
                return

    def on_ping(self, payload: bytes) -> None:
        self.write(pong_frame(payload))  # the server's heartbeat drops a silent client

    def on_close(self, code: int) -> None:
        self.write(close_frame(1000))
        self.lost(code, f"server closed with {code}")

    def on_protocol_error(self, why: str) -> None:
        self.lost(1002, why)

    # --- writing (from any greenlet; never blocks) --------------------------------------

    def write(self, frame: bytes) -> bool:
        if self.sock is None or self.ended:
            return False
        if self.out:
            if len(self.out) > MAX_OUT:
                self.lost(1006, f"server read nothing of {MAX_OUT} bytes sent")
                return False
            self.out += frame
            return True
        try:
            sent = self.sock.send(frame)
        except WANT:
            sent = 0
        except OSError as exc:
            self.lost(1006, f"send failed: {exc}")
            return False
        if sent < len(frame):
            self.out += frame[sent:]
            self.mux.want_write(self, True)
        return True

    def flush(self) -> None:
        if not self.out or self.sock is None:
            return
        try:
            sent = self.sock.send(self.out)
        except WANT:
            return
        except OSError as exc:
            self.lost(1006, f"send failed: {exc}")
            return
        del self.out[:sent]
        if not self.out:
            self.mux.want_write(self, False)

    # --- ending ---------------------------------------------------------------------------

    def close(self, code: int = 1000) -> None:
        """Close on purpose: a close frame (best effort), then the socket."""
        if self.ended:
            return
        self.closing = True
        self.write(close_frame(code))
        self._end()

    def abort(self) -> None:
        """Drop the connection without a close frame (a network cut, as the server sees it)."""
        if not self.ended:
            self.closing = True
            self._end()

    def drop(self) -> None:
        """Cut the connection as a network failure would, and react as to one (`on_lost`)."""
        self.lost(1006, "dropped by the load test")

    def lost(self, code: int, why: str) -> None:
        if self.ended:
            return
        self._end()
        if not self.closing:
            self.on_lost(code, why)

    def _end(self) -> None:
        self.ended = True
        if self.sock is not None:
            self.mux.remove(self)
            with contextlib.suppress(OSError):
                self.sock.close()

    def on_lost(self, code: int, why: str) -> None:
        raise NotImplementedError


def _wait(waiter: Callable[..., Any], sock: Any, timeout: float) -> None:
    waiter(sock.fileno(), timeout=timeout, timeout_exc=TimeoutError("timed out"))
