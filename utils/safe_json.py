"""Reading JSON that comes from outside the program (configs, ``--set`` values, manifests): strict and bounded.

Python's ``json`` module accepts what no setting means and fails badly on what an attacker can write:

* a duplicated key (``{"lr": 0.1, "lr": 10}``) silently keeps the last value: refused here, naming the key;
* ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON: refused here;
* 100,000 nested brackets raise ``RecursionError`` from deep inside the decoder (or crash a thread with a
  smaller stack): the nesting depth is measured on the text before decoding and bounded by ``max_depth``;
* a file that is not UTF-8, or a directory, raises ``UnicodeDecodeError`` / ``IsADirectoryError``.

Every failure raises ``error`` (a :class:`~utils.errors.FrameworkError` subclass, ``ConfigError`` by default)
with a message that starts with the source (a file path) and says what to change, so the command-line scripts
print it as one ``error:`` line.

API::

    loads(text, source="<string>", *, max_depth=MAX_DEPTH, error=ConfigError) -> Any
    load(path, *, max_depth=MAX_DEPTH, error=ConfigError, what="JSON file") -> Any
    check_depth(value, source="<value>", *, max_depth=MAX_DEPTH, error=ConfigError) -> None  # decoded values
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, FrameworkError

# Deeper than any real config (the shipped ones nest 5 levels) or manifest, far below the recursion limit.
MAX_DEPTH = 64


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (give a finite number)")


def _too_deep(text: str, max_depth: int) -> int | None:
    """The offset of the first bracket of JSON ``text`` nested deeper than ``max_depth`` (strings skipped), or None."""
    depth = 0
    in_string = escaped = False
    for offset, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return offset
        elif char in "]}":
            depth -= 1
    return None


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def loads(text: str, source: str = "<string>", *, max_depth: int = MAX_DEPTH,
          error: type[FrameworkError] = ConfigError) -> Any:
    """Decode JSON ``text``; duplicate keys, NaN/Infinity and nesting deeper than ``max_depth`` are refused."""
    offset = _too_deep(text, max_depth)
    if offset is not None:
        line, col = _line_col(text, offset)
        raise error(f"{source}, line {line}, column {col}: nested more than {max_depth} levels deep; at most "
                    f"{max_depth} levels of objects and lists are accepted (no real file nests this deep)")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _DuplicateKey as err:
        raise error(f"{source}: the key {err.key!r} appears twice in one object; JSON readers differ on which one "
                    "counts, so remove one of them") from None
    except json.JSONDecodeError as err:
        raise error(f"{source}, line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}") from err
    except ValueError as err:  # a NaN/Infinity constant
        raise error(f"{source}: {err}") from err
    except RecursionError as err:  # max_depth above what this interpreter's stack allows
        raise error(f"{source}: nested too deeply to decode; lower the nesting") from err


def load(path: str | Path, *, max_depth: int = MAX_DEPTH, error: type[FrameworkError] = ConfigError,
         what: str = "JSON file") -> Any:
    """Read and decode the UTF-8 JSON file ``path`` (see :func:`loads`); read errors name the file too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise error(f"{what} {path} does not exist") from err
    except IsADirectoryError as err:
        raise error(f"{what} {path} is a directory; give the path of a .json file") from err
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8 JSON") from err
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from err
    return loads(text, str(path), max_depth=max_depth, error=error)


def check_depth(value: Any, source: str = "<value>", *, max_depth: int = MAX_DEPTH,
                error: type[FrameworkError] = ConfigError) -> None:
    """Refuse an already decoded value (e.g. a config stored in a checkpoint) nested deeper than ``max_depth``.

    Iterative, so it cannot itself overflow the stack.
    """
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list, tuple)):
            if depth + 1 > max_depth:
                raise error(f"{source}: nested more than {max_depth} levels deep; a config or manifest never is")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
