"""Names that become file names, and output paths that cannot leave their directory.

A name read from a data file (an NMR manifest's group, a file stem) is later written as ``<save_dir>/<name>.npz``;
it must therefore be a plain file name: :data:`NAME_RULE`. :func:`path_inside` builds such an output path and
checks, after resolving symbolic links, that it is a direct child of the output directory.
"""
from __future__ import annotations

import re
from pathlib import Path

from utils.errors import DataError

NAME_MAX = 100
NAME_RULE = (f"names are 1-{NAME_MAX} characters from the ASCII letters, digits, '.', '_' and '-', and start with a "
             "letter, digit or '_' (e.g. sucrose_ns4)")
_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}")


def name_problem(name) -> str | None:
    """None when ``name`` follows :data:`NAME_RULE`, else what is wrong with it (for a message)."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if _NAME.fullmatch(name):  # fullmatch: no trailing newline slips through as with '$'
        return None
    if not name:
        return "it is empty"
    if len(name) > NAME_MAX:
        return f"it has {len(name)} characters"
    bad = next((c for c in name if not re.fullmatch(r"[A-Za-z0-9._-]", c)), None)
    if bad is not None:
        return f"it contains {bad!r}"
    return f"it starts with {name[0]!r}"


def check_name(name, where: str, what: str = "name") -> str:
    """``name`` if it follows :data:`NAME_RULE`; else a DataError saying ``where`` it came from and the rule.

    ``where`` opens the message (a file, a manifest line); ``what`` says which name it is ("group name").
    """
    problem = name_problem(name)
    if problem is not None:
        raise DataError(f"{where}: {what} {name!r} is refused ({problem}); {NAME_RULE}. Rename it")
    return name


def path_inside(directory: Path | str, name: str, suffix: str) -> Path:
    """``directory/<name><suffix>`` after checking ``name`` and that the resolved path is a direct child of the
    resolved ``directory`` (an existing symbolic link pointing elsewhere is refused, not followed).

    Raises:
        DataError: the name breaks :data:`NAME_RULE` or the path would leave ``directory``.
    """
    root = Path(directory).resolve()
    check_name(name, f"{root}", "output name")
    target = (root / f"{name}{suffix}").resolve()
    if target.parent != root:
        raise DataError(f"output {root / (name + suffix)} resolves to {target}, outside {root}; remove the link "
                        "or choose another --save_dir")
    return target
