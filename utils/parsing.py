"""Strict parsing of integers written in data files (manifest levels, image-list labels).

Python's ``int()`` accepts much more than a data file should hold: ``"1_0"`` (10), ``"+1"``, ``" 1\\n"`` and
digits of any script (``"\\u0661"``, Arabic-Indic one; ``"\\uff12"``, full-width two). A file written by a
program only ever holds the ASCII digits 0-9, so that is all that is accepted, in one place for every reader.
"""
from __future__ import annotations

import re

MAX_DIGITS = 18  # every value fits in int64; int() of thousands of digits is slow, and refused above 4300 digits
_INTEGER = re.compile(rf"-?[0-9]{{1,{MAX_DIGITS}}}")


def ascii_int(text: str) -> int | None:
    """The integer ``text`` spells with an optional '-' and 1-18 ASCII digits, nothing else; None otherwise."""
    if not isinstance(text, str) or not _INTEGER.fullmatch(text):
        return None
    return int(text)
