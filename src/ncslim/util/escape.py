"""Text from files and users, made safe to print. Imports nothing of ncslim (any module may use
it, the model families included)."""

from __future__ import annotations

from typing import Any


def shown(text: Any, limit: int = 200) -> str:
    """``text`` safe to print: its non-printable characters (control characters, the ESC of
    an ANSI sequence, bidirectional overrides) escaped as ``repr`` escapes them, cut to
    ``limit`` characters."""
    text = str(text)
    cut = len(text) > limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text + ("..." if cut else "")


def first_line(err: BaseException, limit: int = 2000) -> str:
    """The first line of an error's message, safe to print (:func:`shown`; an error raised on
    text from a file, such as an unknown keyword, carries that text); its type when empty."""
    text = str(err).strip()
    return shown(text.splitlines()[0], limit) if text else type(err).__name__
