"""The built-in registries' names and one-line docs, read from the source files without importing them.

Importing the components (``utils.registry.load_builtins``) imports torch, torchvision and SciPy: seconds and
about 900 MB before a command could answer ``train.py --list`` or say that a config names an unknown model. The
same facts are in the sources, so this module reads them with :mod:`ast`: every ``@REGISTRY.register()`` on a
top-level class or function of :data:`utils.registry.BUILTIN_MODULES`, and the torch optimizers and schedules that
the loops of utils/optim.py register (read from torch's installed sources, ``torch/optim/``).

It gives up, and :func:`static_entries` returns None so that the caller imports the components instead, on any
registration it cannot read exactly: a ``register`` call that is not a lone decorator of a top-level definition,
a name or a docstring computed by code it does not follow, a class that would inherit its docstring, a torch
layout it does not know. ``test_index_equals_the_imported_registries`` (tests/test_startup.py) compares the result
with the imported registries, name by name and line by line, so the two cannot drift apart unnoticed.
"""
from __future__ import annotations

import ast
import functools
import importlib.machinery
import inspect
import sys
from pathlib import Path

from utils import registry as _registry
from utils.registry import BUILTIN_MODULES, Registry

ROOT = Path(__file__).resolve().parents[1]
OPTIM_MODULE = ROOT / "utils" / "optim.py"  # its loops register torch.optim's classes (see _optim_loops)


class Unreadable(Exception):
    """A registration this reader cannot follow exactly; the message says which and where."""


@functools.lru_cache(maxsize=1)
def static_entries() -> dict[str, dict[str, str]] | None:
    """``{registry name: {entry name: first docstring line}}`` of every built-in registry, as
    ``Registry.describe`` would give it after importing; None when the sources hold something not understood."""
    try:
        return read_entries()
    except (Unreadable, OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


def read_entries() -> dict[str, dict[str, str]]:
    """:func:`static_entries`, raising :class:`Unreadable` (or the parse error) instead of returning None."""
    registries = {var: obj for var, obj in vars(_registry).items() if isinstance(obj, Registry)}
    entries: dict[str, dict[str, str]] = {obj.name: {} for obj in registries.values()}
    for path in _source_files():
        for registry, name, doc in _read_component_module(path, registries):
            if name in entries[registry.name]:
                raise Unreadable(f"{path}: {registry.name} name {name!r} is registered twice")
            entries[registry.name][name] = doc
    return entries


def _source_files() -> list[Path]:
    files = []
    for module in BUILTIN_MODULES:
        path = ROOT.joinpath(*module.split("."))
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    return files


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


# --- the framework's own modules ---------------------------------------------------------------------------------

def _read_component_module(path: Path, registries: dict[str, Registry]):
    """``(registry, name, doc)`` for every registration in ``path``."""
    text = path.read_text(encoding="utf-8")
    if "register" not in text:  # most modules register nothing: skip parsing them
        return
    tree = ast.parse(text, str(path))
    aliases: dict[str, Registry] = {}  # local name -> registry, from `from utils.registry import MODELS [as M]`
    attributes: list[ast.Attribute] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr == "register" and isinstance(node.value, ast.Name):
                attributes.append(node)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "utils.registry":
            aliases.update({a.asname or a.name: registries[a.name] for a in node.names if a.name in registries})
        elif (isinstance(node, ast.ImportFrom) and node.module == "utils" and any(a.name == "registry"
                                                                                   for a in node.names)) or (
                isinstance(node, ast.Import) and any(a.name == "utils.registry" for a in node.names)):
            raise Unreadable(f"{path}:{node.lineno}: imports utils.registry as a module")
    uses = [n for n in attributes if n.value.id in aliases]
    if not uses:
        return
    understood: set[int] = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            for decorator in node.decorator_list:
                registry, name = _registration(decorator, aliases, path)
                if registry is None:
                    continue
                if len(node.decorator_list) != 1:  # another decorator may replace the object or its docstring
                    raise Unreadable(f"{path}:{node.lineno}: {node.name} has decorators besides the registration")
                understood.add(id(decorator.func))
                yield registry, name or node.name, _definition_doc(node, tree, path)
        elif isinstance(node, ast.For) and path.resolve() == OPTIM_MODULE.resolve():
            for registry, name, doc, call in _optim_loop(node, aliases, tree, path):
                understood.add(id(call.func))
                yield registry, name, doc
    for use in uses:
        if id(use) not in understood:
            raise Unreadable(f"{path}:{use.lineno}: a {use.value.id}.register use that is not a lone decorator of a "
                             "top-level class or function")


def _registration(decorator: ast.expr, aliases: dict[str, Registry], path: Path) -> tuple[Registry | None, str]:
    """``(registry, name or "")`` when ``decorator`` is ``@REG.register()`` / ``@REG.register(name="x")``."""
    if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "register" and isinstance(decorator.func.value, ast.Name)
            and decorator.func.value.id in aliases):
        return None, ""
    keywords = {k.arg: k.value for k in decorator.keywords}
    if decorator.args or set(keywords) - {"name"}:
        raise Unreadable(f"{path}:{decorator.lineno}: register() with arguments other than name=")
    if "name" not in keywords:
        return aliases[decorator.func.value.id], ""
    name = keywords["name"]
    if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
        raise Unreadable(f"{path}:{decorator.lineno}: register(name=...) is not a string literal")
    return aliases[decorator.func.value.id], name.value


def _definition_doc(node: ast.ClassDef | ast.FunctionDef, tree: ast.Module, path: Path) -> str:
    """First line of ``inspect.getdoc`` of the class or function ``node`` defines."""
    if isinstance(node, ast.ClassDef):
        assigned = [s.value for s in node.body if isinstance(s, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__doc__" for t in s.targets)]
        if assigned:  # `__doc__ = ...` in the body runs after the docstring, so it wins
            return _first_doc_line(assigned[-1], tree, f"{path}:{node.lineno}: {node.name}.__doc__")
    doc = ast.get_docstring(node, clean=False)
    if doc is None:
        if isinstance(node, ast.ClassDef):  # inspect.getdoc would show a base class's docstring
            raise Unreadable(f"{path}:{node.lineno}: class {node.name} has no docstring of its own")
        return ""
    return _first_line(doc, True, "")


# --- docstrings: the leading text of a string expression ---------------------------------------------------------

def _first_doc_line(expr: ast.expr, tree: ast.Module, where: str) -> str:
    text, complete = _leading_text(expr, {}, tree, 0)
    return _first_line(text, complete, where)


def _first_line(text: str, complete: bool, where: str) -> str:
    """What ``Registry.describe`` shows of a docstring that starts with ``text`` (all of it when ``complete``):
    ``inspect.cleandoc`` strips the first line's indentation, drops blank leading lines and de-indents the others by
    their common margin, which needs the whole text."""
    lines = text.expandtabs().split("\n")
    if lines[0].strip() and len(lines) > 1:
        first = lines[0].lstrip()
    elif complete:
        first = inspect.cleandoc(text)
    else:
        raise Unreadable(f"{where}: its first line is computed by code this reader does not follow")
    return first.splitlines()[0] if first else ""


def _leading_text(expr: ast.expr, env: dict, tree: ast.Module, depth: int) -> tuple[str, bool]:
    """The text a string expression starts with, and whether that is all of it. Follows literals, ``+``,
    f-strings, and calls of this module's one-line functions with literal arguments (``_doc("summary", ...)``)."""
    if depth > 8:
        return "", False
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value, True
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        left, complete = _leading_text(expr.left, env, tree, depth + 1)
        if not complete:
            return left, False
        right, complete = _leading_text(expr.right, env, tree, depth + 1)
        return left + right, complete
    if isinstance(expr, ast.JoinedStr):
        text = ""
        for part in expr.values:
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                text += part.value
                continue
            if (isinstance(part, ast.FormattedValue) and part.conversion == -1 and part.format_spec is None
                    and isinstance(part.value, ast.Name) and part.value.id in env):
                value, complete = _leading_text(*env[part.value.id], tree, depth + 1)
                text += value
                if complete:
                    continue
            return text, False
        return text, True
    if isinstance(expr, ast.Name) and expr.id in env:
        return _leading_text(*env[expr.id], tree, depth + 1)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        function = next((s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == expr.func.id), None)
        bound = _bind(function, expr, env) if function is not None else None
        if bound is not None:
            body = function.body[1:] if ast.get_docstring(function) is not None else function.body
            if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None:
                return _leading_text(body[0].value, bound, tree, depth + 1)
    return "", False


def _bind(function: ast.FunctionDef, call: ast.Call, env: dict) -> dict | None:
    """Parameter name -> (argument expression, its environment) for a call of a plain positional function."""
    params = function.args
    if params.posonlyargs or params.vararg or params.kwonlyargs or params.kwarg or params.defaults:
        return None
    names = [a.arg for a in params.args]
    if len(call.args) > len(names) or any(isinstance(a, ast.Starred) for a in call.args):
        return None
    bound = {n: (a, env) for n, a in zip(names, call.args)}
    for keyword in call.keywords:
        if keyword.arg is None or keyword.arg not in names or keyword.arg in bound:
            return None
        bound[keyword.arg] = (keyword.value, env)
    return bound if len(bound) == len(names) else None


# --- utils/optim.py's loops over torch.optim ---------------------------------------------------------------------

def _optim_loop(node: ast.For, aliases: dict[str, Registry], tree: ast.Module, path: Path):
    """``(registry, name, doc, register call)`` for each class a ``for _name in dir(torch.optim[.lr_scheduler])``
    loop of utils/optim.py registers, read from torch's sources with that loop's rule (see utils/optim.py)."""
    calls = [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "register" and isinstance(n.func.value, ast.Name) and n.func.value.id in aliases]
    if not calls:
        return
    source = ast.unparse(node.iter)
    if len(calls) != 1:
        raise Unreadable(f"{path}:{node.lineno}: a loop with {len(calls)} register calls")
    registry = aliases[calls[0].func.value.id]
    optim = _torch_optim_dir()
    if source == "dir(torch.optim)":
        found = _torch_optimizers(optim)
    elif source == "dir(torch.optim.lr_scheduler)":
        found = _torch_schedulers(optim, _literal_assignment(tree, "_NOT_FROM_JSON", path))
    else:
        raise Unreadable(f"{path}:{node.lineno}: a register loop over {source}, not over torch.optim's names")
    for name, doc in found.items():
        yield registry, name, doc, calls[0]


def _literal_assignment(tree: ast.Module, name: str, path: Path):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise Unreadable(f"{path}: no literal {name} = ...")


def _torch_optim_dir() -> Path:
    """torch/optim/ of the installed torch, found as the import would find it but without running it."""
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec("torch", None) if find_spec is not None else None
        if spec is not None:
            break
    else:
        spec = importlib.machinery.PathFinder.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise Unreadable("torch is not installed as a package with sources")
    optim = Path(list(spec.submodule_search_locations)[0]) / "optim"
    if not (optim / "__init__.py").is_file():
        raise Unreadable(f"{optim}/__init__.py is not there (torch without sources?)")
    return optim


class _TorchModule:
    """One torch.optim source file: its top-level names and the classes they are."""

    def __init__(self, optim: Path, module: str):
        self.optim, self.module = optim, module
        relative = module.split(".")[2:]  # "torch.optim.adam" -> ["adam"]
        self.is_package = not relative or optim.joinpath(*relative).is_dir()
        self.path = (optim.joinpath(*relative, "__init__.py") if self.is_package
                     else optim.joinpath(*relative).with_suffix(".py"))
        self.tree = _parse(self.path)
        # name -> ("class", ClassDef) | ("import", (module, name)) | ("assigned", Assign) | ("other", node)
        self.bindings: dict[str, tuple[str, object]] = {}
        for node in self.tree.body:
            if isinstance(node, ast.ClassDef):
                if node.decorator_list:
                    raise Unreadable(f"{self.path}:{node.lineno}: decorated class {node.name}")
                self.bindings[node.name] = ("class", node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.bindings[node.name] = ("other", node)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute_module(node, module, self.is_package)
                for alias in node.names:
                    if alias.name == "*":
                        raise Unreadable(f"{self.path}:{node.lineno}: from {base} import *")
                    self.bindings[alias.asname or alias.name] = ("import", (base, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.bindings[alias.asname or alias.name.split(".")[0]] = ("other", node)
            elif isinstance(node, ast.Delete):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.bindings.pop(target.id, None)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        self.bindings[target.id] = ("assigned", node)
            elif isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports bind nothing at run time
                if any(isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.Assign)) for n in ast.walk(node)):
                    raise Unreadable(f"{self.path}:{node.lineno}: definitions under an if")

    def doc(self, name: str, node: ast.ClassDef) -> str:
        """First line of the class's doc: its last ``Name.__doc__ = ...`` in this file, else its docstring."""
        assigned = [s.value for s in self.tree.body if isinstance(s, ast.Assign) and any(
            isinstance(t, ast.Attribute) and t.attr == "__doc__" and isinstance(t.value, ast.Name)
            and t.value.id == name for t in s.targets)]
        where = f"{self.path}:{node.lineno}: {name}"
        if assigned:
            return _first_doc_line(assigned[-1], self.tree, where)
        doc = ast.get_docstring(node, clean=False)
        if doc is None:
            raise Unreadable(f"{where} has no docstring of its own")
        return _first_line(doc, True, where)


def _absolute_module(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name of the module ``from .x import y`` in ``module`` reads."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    package = parts[:len(parts) - node.level + (1 if is_package else 0)]
    return ".".join(package + ([node.module] if node.module else []))


# values that are never classes (numbers, strings, lists...): a name assigned one of these is no optimizer
_NOT_CLASSES = (ast.Constant, ast.UnaryOp, ast.BinOp, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.JoinedStr)


class _TorchOptim:
    """Resolves names through torch.optim's modules (``from torch.optim.adam import Adam``, ``class AdamW(Adam)``)."""

    def __init__(self, optim: Path):
        self.optim = optim
        self.modules: dict[str, _TorchModule] = {}

    def module(self, name: str) -> _TorchModule:
        if name not in self.modules:
            self.modules[name] = _TorchModule(self.optim, name)
        return self.modules[name]

    def is_module(self, module: str, name: str) -> bool:
        relative = (module + "." + name).split(".")[2:]
        return self.optim.joinpath(*relative).is_dir() or self.optim.joinpath(*relative).with_suffix(".py").is_file()

    def resolve(self, module: str, name: str, depth: int = 0) -> tuple[str, ast.ClassDef] | None:
        """``(defining module, ClassDef)`` of the class ``module.name`` is; None for a function or a module."""
        if depth > 8:
            raise Unreadable(f"{module}.{name}: import chain too long")
        if self.is_module(module, name):
            return None
        binding = self.module(module).bindings.get(name)
        if binding is None:
            raise Unreadable(f"{module} has no top-level {name}")
        kind, value = binding
        if kind == "class":
            return module, value
        if kind == "import":
            source, original = value
            if not source.startswith("torch.optim"):
                raise Unreadable(f"{module}.{name} comes from {source}, outside torch.optim")
            return self.resolve(source, original, depth + 1)
        if kind == "assigned" and not isinstance(value.value, _NOT_CLASSES):
            raise Unreadable(f"{module}.{name} is bound by an assignment this reader does not follow")
        return None

    def subclasses(self, module: str, node: ast.ClassDef, target: tuple[str, str], depth: int = 0) -> bool:
        """Whether the class ``node`` of ``module`` derives from the class ``target`` = (module, name)."""
        if (module, node.name) == target:
            return True
        if depth > 16:
            raise Unreadable(f"{module}.{node.name}: class hierarchy too deep")
        for base in node.bases:
            if not isinstance(base, ast.Name):
                raise Unreadable(f"{module}:{node.lineno}: {node.name} has the base {ast.unparse(base)}")
            binding = self.module(module).bindings.get(base.id)
            if binding is None:
                raise Unreadable(f"{module}:{node.lineno}: base {base.id} of {node.name} is not a top-level name")
            if binding[0] == "import" and not binding[1][0].startswith("torch.optim"):
                raise Unreadable(f"{module}:{node.lineno}: base {base.id} of {node.name} comes from {binding[1][0]}")
            resolved = self.resolve(module, base.id)
            if resolved is None:
                raise Unreadable(f"{module}:{node.lineno}: base {base.id} of {node.name} is not a class")
            if self.subclasses(*resolved, target, depth + 1):
                return True
        return False


def _torch_optimizers(optim: Path) -> dict[str, str]:
    """The classes of ``dir(torch.optim)`` that subclass ``torch.optim.Optimizer`` (not itself), with docs."""
    torch_optim = _TorchOptim(optim)
    package = torch_optim.module("torch.optim")
    target = ("torch.optim.optimizer", "Optimizer")
    if any(isinstance(s, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "__doc__" for t in s.targets)
           for s in package.tree.body):  # it would run after the defining module's docstring
        raise Unreadable(f"{package.path}: assigns a __doc__")
    found = {}
    for name in package.bindings:
        if name.startswith("__"):
            continue  # __all__, __doc__: no classes
        resolved = torch_optim.resolve("torch.optim", name)
        if resolved is None:
            continue
        module, node = resolved
        if (module, node.name) == target or not torch_optim.subclasses(module, node, target):
            continue
        found[name] = torch_optim.module(module).doc(node.name, node)
    return found


def _torch_schedulers(optim: Path, excluded: set[str]) -> dict[str, str]:
    """The classes of ``dir(torch.optim.lr_scheduler)`` that utils/optim.py registers: public, not ``excluded``, and
    ``LRScheduler`` subclasses or ``ReduceLROnPlateau``."""
    torch_optim = _TorchOptim(optim)
    module = torch_optim.module("torch.optim.lr_scheduler")
    target = ("torch.optim.lr_scheduler", "LRScheduler")
    found = {}
    for name, (kind, value) in module.bindings.items():
        if name.startswith("_") or name in excluded or kind == "other":
            continue
        if kind == "import" and not value[0].startswith("torch.optim"):
            continue  # a class from outside torch.optim (Tensor, Counter) cannot derive from LRScheduler
        resolved = torch_optim.resolve("torch.optim.lr_scheduler", name)
        if resolved is None:
            continue
        if name == "ReduceLROnPlateau" or torch_optim.subclasses(*resolved, target):
            found[name] = torch_optim.module(resolved[0]).doc(resolved[1].name, resolved[1])
    return found
