"""Hugging Face integration: `CheckpointCallback` for the `Trainer` (the ``hf`` extra).

Add ``CheckpointCallback(config)`` to the Trainer's callbacks, drop
``save_total_limit``, and resume with ``latest_checkpoint(output_dir)`` (or ``best_checkpoint``).
"""

try:
    import transformers  # noqa: F401 - fail here, with the extra's name
except ImportError as error:  # pragma: no cover - the extra is installed in CI
    raise ImportError(
        "ckpt.hf needs transformers: pip install -e '.[hf]' in ckpt's clone"
    ) from error

from ckpt.hf._callback import CheckpointCallback, best_checkpoint, latest_checkpoint

__all__ = ["CheckpointCallback", "best_checkpoint", "latest_checkpoint"]
