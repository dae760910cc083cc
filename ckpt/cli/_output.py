"""Output of the ``ckpt`` command: tables, sizes and times, progress bars, log lines."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from ckpt.storage import redact_url


def _error(message: str) -> None:
    # A library's message may quote a URL a user gave, credentials and all.
    sys.stderr.write(f"ckpt: error: {redact_url(message)}\n")


def _print_json(data: Any) -> None:
    print(json.dumps(_jsonable(data), indent=2, allow_nan=False))


def _jsonable(value: Any) -> Any:
    """``value`` as strict JSON data: NaN and infinities become null.

    Files NeMo RL's manager wrote can hold them.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: int) -> list[str]:
    """Align ``rows`` under ``header``: the first ``numeric`` columns to the right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(width) if i < numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _value(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "-"
    text = str(value)
    return text if len(text) <= 12 else text[:11] + "…"


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            shown = f"{amount:.1f}".removesuffix(".0")
            return f"{size} B" if unit == "B" else f"{shown} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _local(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


class _Progress:
    """A progress bar on stderr while something long runs, drawn only on a terminal.

    Without a ``total`` it is a status line, shown at once; a bar appears only once the
    work has taken ``delay`` seconds, so quick commands do not flicker.
    """

    _WIDTH = 30

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        delay: float = 0.3,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._label = label
        self._total = total
        self._done = 0
        self._shown = False
        self._next = time.monotonic() + (0.0 if total is None else delay)
        try:
            self._on = self._stream.isatty()
        except (AttributeError, ValueError):  # a closed or unusual stream: stay quiet
            self._on = False

    def __enter__(self) -> _Progress:
        self._draw()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more units done."""
        self._done += count
        self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        if not self._on or now < self._next:
            return
        self._next = now + 0.1  # at most ten redraws a second
        if self._total is None:
            text = f"{self._label} ..."
        else:
            filled = self._WIDTH * min(self._done, self._total) // max(self._total, 1)
            bar = "#" * filled + "." * (self._WIDTH - filled)
            text = f"{self._label} [{bar}] {self._done}/{self._total}"
        self._stream.write(f"\r{text}\x1b[K")
        self._stream.flush()
        self._shown = True


class _LogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"ckpt: {record.levelname.lower()}: {redact_url(super().format(record))}"


@contextlib.contextmanager
def _library_log(*, debug: bool, shown: bool) -> Iterator[None]:
    """Show the ``ckpt`` logger's warnings (everything with ``debug``) on stderr."""
    logger = logging.getLogger("ckpt")
    level = logger.level
    # INFO must reach handlers for `prune` to count deletions, whatever is shown.
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    handler.setFormatter(_LogFormatter())
    if shown:
        logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def step_ranges(steps: Iterable[int], *, most: int = 10) -> str:
    """Steps as ranges, ``1-4, 7, 9-12``; past ``most`` ranges, a count of all of them."""
    ordered = sorted(set(steps))
    # Consecutive steps share step - position: each group is one range.
    groups = [
        [step for _, step in run]
        for _, run in itertools.groupby(enumerate(ordered), lambda item: item[1] - item[0])
    ]
    shown = [f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups[:most]]
    more = f", ... ({len(ordered)} in all)" if len(groups) > most else ""
    return ", ".join(shown) + more
