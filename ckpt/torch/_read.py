"""Reading a state file's tensors: straight into their memory, the digest one piece behind.

A CPU tensor is read into its own memory (``readinto``, no intermediate copy); a tensor
elsewhere (a GPU, or a strided target of ``into=``) through one reused host buffer. The
file's digest is computed on a helper thread over what was just read, one piece behind
the reads, so on two cores checking costs a load almost nothing; a piece of a reused
buffer is always hashed before the buffer is filled again.

Pieces are 4 MiB: the hash then reads what the read just wrote from the CPU's cache
(64 MiB pieces made a warm load 3x slower on two cores, ``benchmarks/load.py``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import BinaryIO

import torch
import xxhash

from ckpt._errors import CheckpointError, SerializationError
from ckpt.storage import _digest
from ckpt.torch import _plan
from ckpt.torch._format import TensorEntry

_MAX_STAGING = 64 << 20
_MIN_STAGING = 1 << 20
_PIECE = 4 << 20  # read, then hashed while the next is read: still in the CPU's cache
_AHEAD = 4  # pieces read and not hashed yet, at most
_TIMEOUT_S = 120.0  # a 4 MiB piece hashes in about 0.4 ms: only a hung thread waits this


class Checked:
    """The digest of a file read in order, computed on a helper thread behind the reads.

    `update` hands a view over; the caller must not change its bytes until `sync`
    (a reused buffer, a block a save writes) or the end (a tensor's own memory, which
    is only read further on). Views under ``offload_from`` bytes are hashed inline when
    nothing is waiting (a thread's hand-off costs more than their hash), else queued,
    so the order is always the file's.
    """

    def __init__(self, offload_from: int = _PIECE) -> None:
        self.digest = _digest.hasher()
        self._offload_from = offload_from
        self._todo: queue.SimpleQueue[memoryview | bytes | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0

    def _run(self) -> None:
        while (block := self._todo.get()) is not None:
            try:
                self.digest.update(block)
            except BaseException as exc:  # handed to the reader, which raises it
                self._done.put(exc)
            else:
                self._done.put(None)

    def update(self, block: memoryview | bytes) -> None:
        """Add ``block`` (the file's next bytes) to the digest."""
        if not self._pending and len(block) < self._offload_from:
            self.digest.update(block)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ckpt-hash-read", daemon=True)
            self._thread.start()
        self._todo.put(block)
        self._pending += 1
        while self._pending > _AHEAD:
            self._wait_one()

    def _wait_one(self) -> None:
        try:
            error = self._done.get(timeout=_TIMEOUT_S)
        except queue.Empty:
            raise CheckpointError(
                f"the thread checking the state file's digest did not answer in {_TIMEOUT_S:g} s"
            ) from None
        self._pending -= 1
        if error is not None:
            raise error

    def sync(self) -> None:
        """Wait until every byte handed over so far is in the digest."""
        while self._pending:
            self._wait_one()

    def close(self) -> None:
        """Stop the helper thread (if one was started); the digest is then complete."""
        try:
            self.sync()
        finally:
            if self._thread is not None:
                self._todo.put(None)
                self._thread.join(timeout=_TIMEOUT_S)  # a daemon: never keeps a process
                self._thread = None


def _read_exact(f: BinaryIO, view: memoryview, path: str, checked: Checked | None) -> None:
    done = 0
    while done < len(view):
        piece = view[done : done + _PIECE]
        n = f.readinto(piece)  # type: ignore[attr-defined]  # FileIO and BytesIO have it
        if not n:
            raise SerializationError(f"{path} is truncated (it was changed while being read?)")
        if checked is not None:
            checked.update(piece[:n])
        done += n


def skip(f: BinaryIO, nbytes: int, path: str, checked: Checked | None) -> None:
    """Move ``nbytes`` on: read and hashed where the file is checked, else one seek."""
    if checked is None:
        f.seek(nbytes, 1)
        return
    while nbytes:
        chunk = f.read(min(nbytes, _PIECE))
        if not chunk:
            raise SerializationError(f"{path} is truncated (it was changed while being read?)")
        checked.update(chunk)
        nbytes -= len(chunk)


def _own_memory(tensor: torch.Tensor) -> memoryview | None:
    """``tensor``'s bytes as a writable view, where it is dense CPU memory of its own."""
    if not _plan._direct(tensor) or tensor.numel() == 0:
        return None
    flat = tensor.detach().as_strided((tensor.numel(),), (1,))
    return flat.view(torch.uint8).numpy().data


class Staging:
    """One reused host buffer for tensors that cannot be read or written in place.

    Saves and loads share it: a GPU tensor, or a strided one, goes through it a block
    at a time, so neither ever holds a second copy of the state.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._buffer: torch.Tensor | None = None

    def get(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """A CPU uint8 tensor of ``nbytes`` bytes (valid until the next call)."""
        buffer = self._buffer
        if buffer is None or buffer.numel() < nbytes:
            pin = device.type == "cuda" and torch.cuda.is_available()
            buffer = torch.empty(max(nbytes, self.size), dtype=torch.uint8, pin_memory=pin)
            self._buffer = buffer
        return buffer[:nbytes]


def fill(
    f: BinaryIO,
    entry: TensorEntry,
    target: torch.Tensor,
    *,
    staging: Staging,
    path: str,
    checked: Checked | None,
) -> None:
    """Read the tensor ``entry`` describes (``f`` is at its start) into ``target``.

    ``target`` has the entry's shape and dtype; its device and strides may be any.
    """
    own = _own_memory(target)
    if own is not None:
        _read_exact(f, own, path, checked)
        return
    size = min(_MAX_STAGING, entry.nbytes)
    if target.is_contiguous():  # a GPU tensor, say: byte ranges of its memory, in turn
        flat = target.detach().reshape(-1).view(torch.uint8)
        blocks: list[tuple[torch.Tensor, torch.Size | None]] = [
            (flat[i : i + size], None) for i in range(0, entry.nbytes, size)
        ]
    else:  # a strided view in `into`: blocks of whole rows, or one row where it is larger
        rows = target.detach()
        rows = rows.reshape(1) if rows.dim() == 0 else rows
        per_block = max(1, size // max(1, entry.nbytes // max(rows.shape[0], 1)))
        blocks = [
            (rows[i : i + per_block], rows[i : i + per_block].shape)
            for i in range(0, rows.shape[0], per_block)
        ]
    for block, shape in blocks:
        buffer = staging.get(block.numel() * block.element_size(), target.device)
        _read_exact(f, buffer.numpy().data, path, checked)
        source = buffer if shape is None else buffer.view(block.dtype).view(shape)
        with torch.no_grad():
            block.copy_(source)
        if checked is not None:
            checked.sync()  # the buffer is filled again next


@contextlib.contextmanager
def checking(enabled: bool, *, offload_from: int = _PIECE) -> Iterator[Checked | None]:
    """A `Checked` for a file with a digest (``enabled``), stopped however it ends."""
    if not enabled:
        yield None
        return
    checked = Checked(offload_from)
    try:
        yield checked
    finally:
        checked.close()


def expected_trailer(checked: Checked) -> bytes:
    """The digest of everything read so far (the helper thread has caught up)."""
    checked.sync()
    digest: xxhash.xxh3_128 = checked.digest
    return digest.digest()
