"""The sending half of a connection: whole messages, in order, one writer at a time.

Taking a trio lock yields to the scheduler even when nobody holds it: a message written under
the lock leaves a pass of the scheduler (often hundreds of µs on a busy node) after it was
ready. On a connection nothing else is writing to, a small message goes to the kernel at once
instead, in the caller's task (`MessageWriter.write_now`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence

import trio

from ringfs.node.rpc.protocol import Buffer

#: The largest message written at once: joining its buffers copies them, which a block (written
#: buffer by buffer under the lock) is not worth.
AT_ONCE_MAX = 64 * 1024


class MessageWriter:
    """Writes whole messages to one stream. `lock` is held by whoever writes through the stream
    (see `write_locked`); a message written at once goes only while nobody does.

    What the kernel takes only in part of a message written at once, a task of its own writes
    under the lock, ahead of anything later. If that fails or takes longer than
    `rest_time_limit`, half a message may be on the wire and nothing after it would parse:
    `broken` is awaited, to close the connection."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        nursery: trio.Nursery,
        name: str,
        rest_time_limit: float,
        broken: Callable[[], Awaitable[None]],
    ) -> None:
        self.lock = trio.Lock()
        self._stream = stream
        # The plain socket under the stream, written to at once; None under TLS.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._nursery = nursery
        self._name = name
        self._rest_time_limit = rest_time_limit
        self._broken = broken
        # The rest of a message written at once in part: the next write starts with it.
        self._unsent = memoryview(b"")

    @property
    def free(self) -> bool:
        """Whether a message could be written at once now: the stream is a plain socket and
        nothing else is being written (no writer holds the lock, no rest waits)."""
        return self._socket is not None and not self.lock.locked() and not self._unsent

    def write_now(self, buffers: Sequence[Buffer]) -> bool:
        """Write whole messages at once, in the caller's task, when the writer is `free` and
        they are small. Returns False, having written nothing, otherwise (also when the kernel
        has no room for them now)."""
        if not self.free or sum(len(buffer) for buffer in buffers) > AT_ONCE_MAX:
            return False
        assert self._socket is not None  # free
        payload = b"".join(buffers)
        try:
            sent = os.write(self._socket.fileno(), payload)
        except OSError:  # no room now, or the connection broke: a write under the lock tells
            return False
        if sent < len(payload):
            self._unsent = memoryview(payload)[sent:]
            self._nursery.start_soon(self._write_unsent, name=self._name)
        return True

    async def write(self, buffers: Sequence[Buffer]) -> None:
        """Write whole messages: at once if `write_now` can, else under the lock."""
        if not self.write_now(buffers):
            async with self.lock:
                await self.write_locked(buffers)

    async def write_locked(self, buffers: Sequence[Buffer]) -> None:
        """Write whole messages, after the rest of one written at once in part; the caller
        holds `lock`. An exception may leave half a message on the wire."""
        if self._unsent:
            unsent, self._unsent = self._unsent, memoryview(b"")
            await self._stream.send_all(unsent)
        for buffer in buffers:
            await self._stream.send_all(buffer)

    async def _write_unsent(self) -> None:
        """Finish what `write_now` wrote in part, unless a write under the lock did first."""
        with (
            trio.move_on_after(self._rest_time_limit),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            async with self.lock:
                await self.write_locked(())
                return
        await self._broken()
