"""Quoting a caller's or a file's value in a message, at a bounded cost."""

from __future__ import annotations

import re
import reprlib
from typing import Any

# The userinfo of a URL (``KEY:SECRET@`` in ``s3://KEY:SECRET@bucket/run``).
USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s]*@")

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 6
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, computed without the whole repr.

    A value from a YAML file can be an alias bomb, whose full repr is gigabytes: the
    nesting and lengths looked at are bounded before anything is formatted.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # a broken __repr__ must not hide the message it is quoted in
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def redact_url(text: str) -> str:
    """``text`` with the userinfo of every URL in it hidden: ``s3://***@bucket/run``."""
    return USERINFO.sub(r"\g<scheme>***@", text)
