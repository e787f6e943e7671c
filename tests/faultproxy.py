"""A TCP proxy on 127.0.0.1 that misbehaves on purpose (issue #16's network faults): per
connection it can drop both sides after some bytes, stall (stop forwarding, keep the connection
open), or deliver slowly, in either direction. It counts what it did, so tests can show the fault
really happened."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    """What happens to one connection. ``after`` counts the bytes forwarded in ``direction``
    ("down": server to client, "up": client to server) before the fault strikes."""

    kind: str  # "drop", "stall", "refuse" (closed at once), "slow"
    after: int = 0
    direction: str = "down"
    rate: int = 0  # bytes a second, for "slow"


@dataclass
class Counts:
    connections: int = 0
    dropped: int = 0
    stalled: int = 0
    refused: int = 0
    down_bytes: int = 0
    up_bytes: int = 0


class FaultProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target>; ``plan(n)`` gives the fault of the
    n-th connection (0-based), or None to pass it through untouched. ``plan`` may be replaced
    while the proxy runs (a network that heals)."""

    def __init__(self, target_port: int, plan: Callable[[int], Fault | None]) -> None:
        self.target_port = target_port
        self.plan = plan
        self.counts = Counts()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        index = self.counts.connections
        self.counts.connections += 1
        fault = self.plan(index)
        if fault is not None and fault.kind == "refuse":
            self.counts.refused += 1
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        done = asyncio.Event()

        def close_both() -> None:
            client_w.transport.abort()
            server_w.transport.abort()
            done.set()

        down = fault if fault is not None and fault.direction == "down" else None
        up = fault if fault is not None and fault.direction == "up" else None
        tasks = [
            asyncio.create_task(self._pump(server_r, client_w, down, "down", close_both)),
            asyncio.create_task(self._pump(client_r, server_w, up, "up", close_both)),
        ]
        await done.wait()
        for task in tasks:
            task.cancel()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fault: Fault | None,
        direction: str,
        close_both: Callable[[], None],
    ) -> None:
        sent = 0
        try:
            while data := await reader.read(65536):
                if fault is not None and fault.kind in ("drop", "stall") and sent + len(data) > fault.after:
                    writer.write(data[: max(0, fault.after - sent)])
                    await writer.drain()
                    self._count(direction, max(0, fault.after - sent))
                    if fault.kind == "drop":
                        self.counts.dropped += 1
                        close_both()
                        return
                    self.counts.stalled += 1
                    await asyncio.Event().wait()  # forever: until the peer gives up and closes
                writer.write(data)
                await writer.drain()
                sent += len(data)
                self._count(direction, len(data))
                if fault is not None and fault.kind == "slow" and fault.rate:
                    await asyncio.sleep(len(data) / fault.rate)
        except (ConnectionError, OSError):
            pass
        close_both()

    def _count(self, direction: str, n: int) -> None:
        if direction == "down":
            self.counts.down_bytes += n
        else:
            self.counts.up_bytes += n
