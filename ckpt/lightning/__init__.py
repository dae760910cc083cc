"""Lightning integration: ckpt's `ModelCheckpoint` (the ``lightning`` extra).

Change ``from lightning.pytorch.callbacks import ModelCheckpoint`` to
``from ckpt.lightning import ModelCheckpoint``; the arguments stay.
"""

try:
    import lightning.pytorch  # noqa: F401 - fail here, with the extra's name
except ImportError as error:  # pragma: no cover - the extra is installed in CI
    raise ImportError(
        "ckpt.lightning needs Lightning: pip install -e '.[lightning]' in ckpt's clone"
    ) from error

from ckpt.lightning._callback import ModelCheckpoint

__all__ = ["ModelCheckpoint"]
