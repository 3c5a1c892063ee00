"""A TCP forwarder on a free loopback port whose link the test can stall, cut and restore.

It runs in the test's event loop (asyncio protocols, no threads):

- `stall()` stops forwarding from the server to the clients (TCP back-pressure keeps the bytes
  in the kernel), as a link that went quiet does: the server believes it sent, the client
  never receives.
- `cut()` aborts every open connection (both sides see a reset) and, until `restore()`,
  accepts new ones only to abort them at once, as a network outage does. The listening port
  stays bound, so no other process can take it meanwhile.

Use it as `async with TcpProxy(port) as proxy:`; leaving the block closes every transport.
"""

from __future__ import annotations

import asyncio
import contextlib

# Pause reading one side while the other side has this much unwritten data.
HIGH_WATER = 256 * 1024


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; bytes it reads are written to `peer`."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.link.proxy._opened(self)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        # Forward the half-close; the connection ends once both directions have ended.
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.eof:
            self.link.abort()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.link.abort()
        self.link.proxy._lost(self)

    # The peer's write buffer filled up or drained: stop or resume reading from this side.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Link:
    """A client socket and its upstream socket, torn down together."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.client: _Side = _Accepted(self)
        self.upstream = _Side(self)
        self.client.peer, self.upstream.peer = self.upstream, self.client

    def stall(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def abort(self) -> None:
        self.proxy._links.discard(self)
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.abort()


class _Accepted(_Side):
    """The client side: on accept, drop it if the link is cut, else dial the target."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        proxy = self.link.proxy
        if proxy.is_cut:
            self.link.abort()
            return
        assert self.transport is not None
        self.transport.pause_reading()  # until the upstream connection is up
        proxy._links.add(self.link)
        task = asyncio.get_running_loop().create_task(proxy._dial(self.link))
        proxy._tasks.add(task)
        task.add_done_callback(proxy._tasks.discard)


class TcpProxy:
    """Forward `127.0.0.1:<free port>` to `target_host:target_port`."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.is_cut = False
        self.stalled = False
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sides: set[_Side] = set()  # sockets whose transport has not reported closing
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    def _opened(self, side: _Side) -> None:
        self._sides.add(side)
        self._all_closed.clear()

    def _lost(self, side: _Side) -> None:
        self._sides.discard(side)
        if not self._sides:
            self._all_closed.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections currently forwarded."""
        return len(self._links)

    async def start(self) -> TcpProxy:
        loop = asyncio.get_running_loop()

        def accept() -> _Side:
            self.accepted += 1
            return _Link(self).client

        self._server = await loop.create_server(accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _dial(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: link.upstream, *self.target)
        except OSError:
            link.abort()
            return
        if link not in self._links:  # cut or closed while dialling
            link.abort()
            return
        if self.stalled:
            link.stall()
        assert link.client.transport is not None
        link.client.transport.resume_reading()

    def stall(self) -> None:
        """Stop forwarding server-to-client bytes on every connection, new ones included."""
        self.stalled = True
        for link in list(self._links):
            link.stall()

    def cut(self) -> None:
        """Abort every connection; abort new ones as soon as they are accepted."""
        self.is_cut = True
        for link in list(self._links):
            link.abort()

    def restore(self) -> None:
        """Forward new connections normally again (the cut ones stay dead)."""
        self.is_cut = False
        self.stalled = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        # Aborted transports close their sockets when they report connection_lost.
        await asyncio.wait_for(self._all_closed.wait(), 5)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
