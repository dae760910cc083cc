"""A TCP proxy on 127.0.0.1 that injects a store's faults between s3fs and the S3 server.

The tests point s3fs's ``endpoint_url`` at the proxy, which forwards to moto's server,
and switch it, for a set time, to one of the faults object storage users meet:

* ``refuse``: every connection open is reset and new ones are reset at once (the
  endpoint is down; the client sees ``connection refused`` or a reset);
* ``stall``: connections are accepted and nothing goes through either way (a black
  hole: the client waits on its own timeouts);
* ``cut``: each connection forwards ``cut_after`` bytes of a request, then is reset
  mid-transfer.

Ended faults go back to ``pass``; connections stalled meanwhile are closed then (what
they sent never arrived). It runs in the test's process or, through ``python -m``,
as a process of its own that jobs and tests share by its control file.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from typing import Literal

Mode = Literal["pass", "refuse", "stall", "cut"]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dropped endpoint does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


class FaultProxy:
    """Forward 127.0.0.1:``port`` to ``target`` (``http://host:port``), faults on demand."""

    def __init__(self, target: str, *, cut_after: int = 32 << 10) -> None:
        host, port = target.removeprefix("http://").rstrip("/").rsplit(":", 1)
        self._target = (host, int(port))
        self.cut_after = cut_after
        self.mode: Mode = "pass"
        self._until = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start within 10 s")

    @property
    def endpoint(self) -> str:
        """The URL s3fs is given instead of the server's."""
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def fault(self, mode: Mode, seconds: float | None = None) -> None:
        """Switch to ``mode`` (for ``seconds``, then back to ``pass``; else until told)."""
        self._loop.call_soon_threadsafe(self._switch, mode, seconds)

    def _switch(self, mode: Mode, seconds: float | None) -> None:
        self.mode = mode
        self._until = 0.0 if seconds is None else time.monotonic() + seconds
        if mode in ("refuse", "stall"):
            # An endpoint that goes down takes its open connections with it.
            for writer in list(self._writers):
                _reset(writer)
            self._writers.clear()
        if seconds is not None:
            self._loop.call_later(seconds, self._end, self._until)

    def _end(self, until: float) -> None:
        if self._until == until:  # not replaced by a later fault meanwhile
            self.mode = "pass"
            for writer in list(self._writers):
                if getattr(writer, "_stalled", False):
                    _reset(writer)

    def wait_passing(self, timeout: float = 60) -> None:
        """Block until the current fault has ended."""
        deadline = time.monotonic() + timeout
        while self.mode != "pass":
            if time.monotonic() > deadline:
                raise TimeoutError("the fault did not end")
            time.sleep(0.02)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "refuse":
            _reset(writer)
            return
        stalled = self.mode == "stall"
        if stalled:
            writer._stalled = True  # type: ignore[attr-defined]
            self._writers.add(writer)
            with contextlib.suppress(Exception):
                while await reader.read(65536):
                    pass  # swallowed: nothing reaches the server, nothing comes back
            self._writers.discard(writer)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            _reset(writer)
            return
        self._writers.update((writer, up_writer))
        budget = [self.cut_after if self.mode == "cut" else -1]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if count and budget[0] >= 0:
                        if len(data) >= budget[0]:
                            dst.write(data[: budget[0]])
                            await dst.drain()
                            _reset(writer)
                            _reset(up_writer)
                            return
                        budget[0] -= len(data)
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        self._writers.discard(writer)
        self._writers.discard(up_writer)

    def close(self) -> None:
        """Stop the proxy and close every connection."""

        def stop() -> None:
            for writer in list(self._writers):
                _reset(writer)
            self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)
        self._loop.close()
