"""Reading the pickles other formats keep, without running code from them.

DCP keeps its checkpoint's plan (``.metadata``) as a pickle, and the non-tensor values
of a state dict as ``torch.save`` files; megatron-core keeps its common state
(``common.pt``) as one too. A pickle can name any callable and have it called, so
ckpt never hands one of these to `pickle.load`: DCP's metadata goes through an
unpickler that admits only the classes that metadata is made of (listed below), and
the other files through ``torch.load(weights_only=True)`` (tensors, containers,
numbers and strings). A file that names anything else is refused with a
`SerializationError` naming it, before anything it names is called.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

from ckpt._errors import SerializationError

# (module, name) pairs a DCP `.metadata` refers to, as torch 2.1 to 2.13 write it.
_DCP_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # a lookup of a layout by name
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
}


class _DcpUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], path: str) -> None:
        super().__init__(file)
        self._where = path

    def find_class(self, module: str, name: str) -> Any:
        import torch  # noqa: PLC0415 - only a DCP load gets here

        if (module, name) in _DCP_CLASSES:
            return super().find_class(module, name)
        if module == "torch":
            # A dtype or memory format is a value, not something a pickle can call.
            value = getattr(torch, name, None)
            if isinstance(value, (torch.dtype, torch.memory_format, torch.layout)):
                return value
        raise SerializationError(
            f"{self._where} is not DCP metadata that ckpt loads: it names {module}.{name}, "
            f"which loading would call. ckpt unpickles only the classes DCP's metadata "
            f"is made of (torch.distributed.checkpoint.metadata's, torch sizes and "
            f"dtypes, paths and plain containers), so a crafted file runs nothing"
        )


def load_dcp_metadata(file: IO[bytes], path: str) -> Any:
    """DCP's ``Metadata`` from ``file`` (read from ``path``, named in messages).

    Raises:
        SerializationError: If the file names anything but DCP's metadata classes,
            or is not a pickle of a ``Metadata``.
    """
    from torch.distributed.checkpoint.metadata import Metadata  # noqa: PLC0415

    try:
        found = _DcpUnpickler(file, path).load()
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"{path} is not DCP metadata that can be read ({exc!r})") from None
    if not isinstance(found, Metadata):
        raise SerializationError(
            f"{path} is not DCP metadata: it holds a {type(found).__name__}, not a Metadata"
        )
    return found


def load_weights_only(file: IO[bytes] | str, path: str, **kwargs: Any) -> Any:
    """``torch.load(file, weights_only=True)``, refusing with a message naming ``path``.

    Raises:
        SerializationError: If the file holds anything but tensors, containers,
            numbers and strings (or is no ``torch.save`` file).
    """
    import torch  # noqa: PLC0415

    try:
        return torch.load(file, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's own message is long; its unpickler's line names what was refused.
        named = [line for line in lines if "GLOBAL" in line or "WeightsUnpickler" in line]
        why = (named or lines or [repr(exc)])[0]
        raise SerializationError(
            f"{path} holds something ckpt does not load: only tensors, containers, "
            f"numbers and strings are read from a pickle (torch.load(weights_only=True)), "
            f"so a crafted file runs nothing ({why})"
        ) from None
