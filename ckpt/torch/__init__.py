r"""Save and load a nested state of tensors: safely, durably, at the disk's speed.

`save_state` writes a state into one file, `STATE_FILE` (``state.ckpt``), in a
checkpoint's temporary directory (the one `CheckpointManager.init_tmp_checkpoint`
returns, or that a ``with manager.checkpoint(...) as path`` block gets); `load_state`
reads it back. This module needs the ``torch`` extra; ``import ckpt`` never imports it.

A state is a tree of dicts (any mapping), lists and tuples whose leaves are tensors,
ints, floats, strings, bools and None; dict keys are ints, floats, strings, bools or
None. This covers ``model.state_dict()`` and ``optimizer.state_dict()``. Anything else
is refused with `ckpt.SerializationError` before a byte is written.

Why not ``torch.save``: its file holds a pickle, and loading it safely depends on
``torch.load(weights_only=True)``'s restricted unpickler; it computes a CRC-32 of every
tensor on the calling thread (about 4 GB/s on one core: on a disk that ``dd`` writes at
2 GB/s, ``torch.save`` + fsync reached 0.6-0.7 of dd's bandwidth, and this module about
1.0, see ``benchmarks/state_bandwidth.py``); it writes a view's whole storage (a small
slice of a large tensor costs the large tensor); and it copies each GPU storage whole to
host memory. This format holds no pickle at all, so loading cannot run code whatever
the file holds.

The file (every integer little-endian)::

    8 bytes   magic b"\x89CKPTST\n"
    8 bytes   the length H of the header
    H bytes   the header: UTF-8 JSON (below)
    zeros     to the next multiple of 4096: the data section starts there
    data      each tensor's bytes, C-contiguous, in the machine's byte order, each
              starting at a multiple of 64 from the data section's start
    16 bytes  the XXH3-128 digest of every byte before it (format 2 on)

The header is ``{"format": 2, "byteorder": "little", "data_size": N, "tensors":
[{"dtype": "float32", "shape": [2, 3], "offset": 0, "device": "cuda:0"}, ...],
"state": S}``, the file's size is exactly the data section's start plus ``data_size``
plus the 16-byte trailer,
and ``S`` is the state as JSON: None, bools, ints, strings, finite floats and lists
stand for themselves; every JSON object is a tagged value, one of ``{"dict": [[key,
value], ...]}``, ``{"tuple": [...]}``, ``{"tensor": index}`` (into ``tensors``) and
``{"float": "nan" | "inf" | "-inf"}``.

The trailer is computed as the bytes stream out, on a helper thread that hashes each
4 MiB piece while it is written (a save with it runs at 1.00x the bandwidth of one
without, ``benchmarks/integrity.py``); `load_state` recomputes it as it reads and
raises ``ckpt.ChecksumMismatchError`` on a difference, returning nothing. Durability
comes from fsync and the manager's atomic publish; a truncated or foreign file is
refused by its size and header. Format 1 files (no trailer, written by ckpt before
it hashed) still load, unchecked.
"""

# load_state's errors, importable from here as before the package was split
from ckpt._errors import DeviceUnavailableError as DeviceUnavailableError
from ckpt._errors import StateNotFoundError as StateNotFoundError
from ckpt.torch._format import STATE_FILE, MapLocation
from ckpt.torch._handler import TorchHandler
from ckpt.torch._io import load_state, save_state

__all__ = ["STATE_FILE", "MapLocation", "TorchHandler", "load_state", "save_state"]
