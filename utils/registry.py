"""A small typed registry mapping config names to classes and functions.

One instance per kind of component (``MODELS``, ``DATA_LOADERS``, ...). A component in a config is
``{"type": NAME, "args": {...}}``; :meth:`Registry.build` looks ``NAME`` up and calls the registered
object with the config ``args`` plus the values the framework supplies at run time (the model's
parameters for an optimizer, the class counts for a loss, ...). Before calling it checks the args
against the signature, so a typo is reported with the valid names instead of a bare ``TypeError``.

The framework's registries fill themselves: their first look-up imports :data:`BUILTIN_MODULES` (torch,
torchvision, ...: seconds). Importing this module imports none of that, so a command can check its arguments
and a config's names (``utils.registry_index`` reads them from the sources) before paying for it.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from utils.errors import ConfigError, format_path

# The modules whose import registers the framework's own components, in the order parse_config imported them.
# utils/registry_index.py reads the same modules' sources; tests/test_registry_index.py keeps the two equal.
BUILTIN_MODULES = ("data_loader", "model", "trainer", "utils.optim")
_builtins_state = "unloaded"  # "loading" while the imports run (their registrations must not start them again)


def load_builtins() -> None:
    """Import :data:`BUILTIN_MODULES` once, registering the built-in components (imports torch: seconds).

    The framework's registries call this on their first look-up, so code that only registers (a plugin) or only
    checks names from the sources never pays for it, and code that looks a name up always sees every built-in.
    A plugin must be imported after this, so that a name it takes twice is reported as the plugin's
    (``parse_config.import_plugins`` does).
    """
    global _builtins_state
    if _builtins_state != "unloaded":
        return
    _builtins_state = "loading"
    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    except BaseException:
        _builtins_state = "unloaded"  # the next look-up raises the same import error instead of missing names
        raise
    _builtins_state = "loaded"


def builtins_loaded() -> bool:
    """Whether :func:`load_builtins` has run: then the registries hold everything and answer at once."""
    return _builtins_state == "loaded"


class Registry:
    """Maps names to classes or functions of one kind.

    Args:
        name: the registry's name as shown in messages (``MODELS``).
        kind: what one entry is, in the singular, for messages ("model").
        contract: how entries are called; shown by ``train.py --list``.
        builtin: one of the framework's registries below, filled by :func:`load_builtins` on first look-up.
    """

    def __init__(self, name: str, kind: str, contract: str = "", builtin: bool = False):
        self.name = name
        self.kind = kind
        self.contract = contract
        self._entries: dict[str, Callable] = {}
        self._builtin = builtin  # the framework's own registries: filled by load_builtins() on first look-up

    def _complete(self) -> None:
        if self._builtin:
            load_builtins()

    def register(self, obj: Callable | None = None, *, name: str | None = None):
        """Register ``obj`` under ``name`` (default: its ``__name__``). Usable as ``@R.register()``."""

        def add(target: Callable) -> Callable:
            key = name or target.__name__
            if key in self._entries:
                other = self._entries[key]
                raise KeyError(
                    f"{self.name}: the name '{key}' is already registered "
                    f"(by {other.__module__}.{other.__qualname__}); register "
                    f"{target.__module__}.{target.__qualname__} under another name"
                )
            self._entries[key] = target
            return target

        return add if obj is None else add(obj)

    def __contains__(self, name: object) -> bool:
        self._complete()
        return name in self._entries

    def __iter__(self):
        self._complete()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self._complete()
        return len(self._entries)

    def names(self) -> list[str]:
        self._complete()
        return sorted(self._entries)

    def names_so_far(self) -> list[str]:
        """The names registered until now, without importing the built-ins: the config check adds those a script
        registered itself (``@LOSSES.register()`` before building a config) to the names the sources register."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, Callable]]:
        self._complete()
        return sorted(self._entries.items())

    def get(self, name: Any, where: Iterable = ()) -> Callable:
        """Return the entry called ``name``; ``where`` is the key path of the ``type`` field, for messages."""
        where = tuple(where)
        if isinstance(name, str) and name in self:
            return self._entries[name]
        raise self.unknown(name, where)

    def unknown(self, name: Any, where: Iterable = (), names: Iterable[str] | None = None) -> ConfigError:
        """The error for a ``type`` that names no entry (or is no string). ``names`` replaces the entries' names:
        the config check reads them from the sources (``utils.registry_index``) before anything is imported."""
        names = self.names() if names is None else sorted(names)
        where = tuple(where)
        loc = format_path(where) + ": " if where else ""
        if not isinstance(name, str):
            return ConfigError(f"{loc}the {self.kind} type must be a string naming a registered {self.kind}, "
                               f"got {name!r}. Registered in {self.name}: {', '.join(names)}")
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return ConfigError(
            f"{loc}unknown {self.kind} '{name}' in registry {self.name}.{hint} "
            f"Registered in {self.name}: {', '.join(names) or '(none)'}. "
            "A class of your own must be registered with "
            f"@{self.name}.register() in a module listed under \"plugins\"."
        )

    def check(self, spec: Any, where: Iterable = (), supplied: Iterable[str] = (),
              hidden: Iterable[str] = ()) -> Callable:
        """Validate ``spec`` without building it: form, name, argument names and simple types.

        ``supplied`` names the parameters the framework passes at run time; they need not be in
        ``args`` (and, for required ones, are not reported missing); ``hidden`` ones, which the config
        must not set, are left out of the list of valid arguments. Returns the registered entry.
        """
        where = tuple(where)
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{format_path(where)}: expected an object "
                              f'{{"type": NAME, "args": {{...}}}}, got {type(spec).__name__} {spec!r}')
        unknown = set(spec) - {"type", "args"}
        if unknown:
            raise ConfigError(f"{format_path(where)}: unknown key(s) {sorted(unknown)}; a component has "
                              'only "type" and "args" (put constructor arguments inside "args")')
        if "type" not in spec:
            raise ConfigError(f'{format_path(where)}: missing "type"; registered in {self.name}: '
                              f"{', '.join(self.names())}")
        target = self.get(spec["type"], where + ("type",))
        args = spec.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise ConfigError(f'{format_path(where + ("args",))}: "args" must be an object of '
                              f"argument names to values, got {type(args).__name__}")
        supplied, hidden = set(supplied), set(hidden)
        params = _parameters(target)
        if params is None:  # signature not introspectable (some builtins): let the call decide
            return target
        accepts_any = any(p.kind is p.VAR_KEYWORD for p, _ in params.values())
        named = {n: p for n, (p, _) in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        for key, value in args.items():
            path = where + ("args", key)
            if key in hidden:
                raise ConfigError(f"{format_path(path)}: '{key}' is set by the framework for {spec['type']}; "
                                  "remove it from the config")
            if key not in named:
                if accepts_any:
                    continue
                close = difflib.get_close_matches(key, list(named), n=3, cutoff=0.5)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ConfigError(f"{format_path(path)}: {spec['type']} has no argument '{key}'.{hint} "
                                  f"Valid arguments: {', '.join(n for n in named if n not in hidden) or '(none)'}")
            problem = _type_problem(value, params[key][1])
            if problem:
                raise ConfigError(f"{format_path(path)}: {spec['type']} expects {problem}, got "
                                  f"{type(value).__name__} {value!r}")
        missing = [n for n, p in named.items()
                   if p.default is p.empty and n not in args and n not in supplied]
        if missing:
            raise ConfigError(f"{format_path(where + ('args',))}: {spec['type']} needs argument(s) "
                              f"{', '.join(repr(m) for m in missing)}; add them to \"args\"")
        return target

    def build(self, spec: Any, where: Iterable = (), *, optional: Mapping[str, Any] | None = None,
              **runtime: Any) -> Any:
        """Build the component ``spec`` describes.

        Args:
            spec: ``{"type": NAME, "args": {...}}``.
            where: key path of ``spec`` in the config, for messages.
            optional: defaults the framework offers; passed only when the entry takes a parameter
                of that name and the config does not set it (e.g. ``cls_num_list``).
            **runtime: values the framework always passes; a config arg of the same name is an error.
        """
        where = tuple(where)
        optional = dict(optional or {})
        target = self.check(spec, where, supplied=set(runtime) | set(optional), hidden=set(runtime))
        args = dict(spec.get("args") or {})
        clash = sorted(set(args) & set(runtime))
        if clash:
            raise ConfigError(f"{format_path(where + ('args',))}: {', '.join(clash)} is set by the framework "
                              f"for {spec['type']}; remove it from the config")
        params = _parameters(target)
        for key, value in optional.items():
            if key in args:
                continue
            if params is None or key in params or any(p.kind is p.VAR_KEYWORD for p, _ in params.values()):
                args[key] = value
        try:
            return target(**runtime, **args)
        except ConfigError:
            raise
        except ValueError as err:  # constructors reject bad values with ValueError; say which config entry
            raise ConfigError(f"{format_path(where)} ({spec['type']}): {err}") from err

    def describe(self) -> list[tuple[str, str]]:
        """``(name, first line of docstring)`` for every entry, for ``train.py --list``."""
        rows = []
        for key, obj in self.items():
            doc = inspect.getdoc(obj) or ""
            rows.append((key, doc.splitlines()[0] if doc else ""))
        return rows

    def __repr__(self) -> str:
        if self._builtin and _builtins_state != "loaded":  # a repr (a debugger, a log line) imports nothing
            return f"Registry({self.name!r}, built-in entries not loaded yet)"
        return f"Registry({self.name!r}, {len(self)} entries: {', '.join(self.names())})"


def _parameters(target: Callable) -> dict[str, tuple[inspect.Parameter, Any]] | None:
    """Parameters of ``target`` with their resolved type hints, or None if not introspectable.

    For a class whose ``__init__`` takes ``**kwargs`` and passes them on (``ClassifierTrainer(config,
    **kwargs)`` -> ``BaseTrainer.__init__``), the parents' parameters are included, so their names
    and types are checked too; the ``**kwargs`` marker is kept only if no parent closes it.
    """
    if not inspect.isclass(target):
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return None
        hints = _hints(target)
        return {n: (p, hints.get(n, p.annotation)) for n, p in signature.parameters.items()}
    params: dict[str, tuple[inspect.Parameter, Any]] = {}
    var_keyword = None
    for cls in target.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        if cls is object:
            break
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):
            return None
        hints = _hints(init)
        var_keyword = None
        for n, p in list(signature.parameters.items())[1:]:  # skip self
            if p.kind is p.VAR_KEYWORD:
                var_keyword = (n, p)
            elif p.kind is not p.VAR_POSITIONAL:
                params.setdefault(n, (p, hints.get(n, p.annotation)))
        if var_keyword is None:
            break
    if var_keyword is not None:
        params[var_keyword[0]] = (var_keyword[1], inspect.Parameter.empty)
    return params


def _hints(func: Callable) -> dict[str, Any]:
    """Resolved annotations (``from __future__ import annotations`` makes them strings)."""
    try:
        return typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: skip the type check rather than fail
        return {}


_JSON_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "a list", dict: "an object", type(None): "null"}


def _type_problem(value: Any, hint: Any) -> str | None:
    """Describe what ``hint`` expects if a JSON ``value`` cannot match it; None when it can (or unknown)."""
    if hint is inspect.Parameter.empty or hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        # Members a JSON value can never be (a Tensor, a Module) are not judged; the others decide.
        options = [o for o in typing.get_args(hint) if _understood(o)]
        if not options or any(_type_problem(value, o) is None for o in options):
            return None
        fitting = [o for o in options if typing.get_origin(o) not in (None, typing.Literal)
                   and _type_problem(value, typing.get_origin(o)) is None]
        if len(fitting) == 1:  # right container, wrong items: say which item
            return _type_problem(value, fitting[0])
        return " or ".join(_type_problem(None, o) if typing.get_origin(o) is typing.Literal else _expects(o)
                           for o in options)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        # compare types too: in Python True == 1 == 1.0, in a config they are different values
        if any(value == a and type(value) is type(a) for a in allowed):
            return None
        return "one of " + ", ".join(repr(a) for a in allowed)
    expected = _expects(hint)
    if expected is None:
        return None
    base = origin or hint
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base in (list, tuple, typing.Sequence) or (isinstance(base, type) and base.__name__ == "Sequence"):
        ok = isinstance(value, (list, tuple))
        if ok:
            return _items_problem(value, hint, expected)
    elif base in (dict, typing.Mapping) or (isinstance(base, type) and base.__name__ == "Mapping"):
        ok = isinstance(value, dict)
        if ok:
            return _items_problem(value, hint, expected)
    else:
        ok = isinstance(value, base)
    return None if ok else expected


def _items_problem(value: list | tuple | dict, hint: Any, expected: str) -> str | None:
    """What a list / object ``value`` of the right outer type fails in its items (``list[int]``, ``tuple[float,
    float]``, ``dict[str, float]``): the full expectation and the first wrong item; None when all fit."""
    bad = _first_bad_item(value, hint)
    if bad is None:
        return None
    where, item = bad
    shown = f"{type(item).__name__} {item!r}" if where else f"{len(item)} items"
    return f"{_describe(hint)} ({where or 'it'} is {shown})"


def _first_bad_item(value: Any, hint: Any, where: str = "") -> tuple[str, Any] | None:
    """``(location like "[1][0]", item)`` of the first item of ``value`` that ``hint``'s item types refuse."""
    args = typing.get_args(hint)
    if not args or not isinstance(value, (list, tuple, dict)):
        return None
    if isinstance(value, dict):
        items = [(f'["{k}"]', v, args[-1]) for k, v in value.items()] if len(args) == 2 else []
    elif typing.get_origin(hint) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            return where, value  # a wrong length: the value itself is the bad item
        items = [(f"[{i}]", v, h) for i, (v, h) in enumerate(zip(value, args))]
    else:
        items = [(f"[{i}]", v, args[0]) for i, v in enumerate(value)]
    for key, item, item_hint in items:
        origin = typing.get_origin(item_hint)
        if origin in (typing.Union, types.UnionType) or origin is typing.Literal or _expects(item_hint) is None:
            if _type_problem(item, item_hint):
                return where + key, item
            continue
        if _type_problem(item, origin or item_hint):  # the outer type (a list where a number belongs)
            return where + key, item
        deeper = _first_bad_item(item, item_hint, where + key)
        if deeper is not None:
            return deeper
    return None


_PLURALS = {int: "integers", float: "numbers", bool: "true/false values", str: "strings", list: "lists",
            dict: "objects", type(None): "nulls"}


def _describe(hint: Any, plural: bool = False) -> str:
    """``list[list[int]]`` -> "a list of lists of integers"; used in messages about nested values."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args if _understood(a))
    if origin is typing.Literal:
        return ("values" if plural else "one") + " of " + ", ".join(repr(a) for a in args)
    expected = _expects(hint)
    if expected is None:
        return "values" if plural else "a value"
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        inner = ", ".join(_describe(a) for a in args)
        return f"{'lists' if plural else 'a list'} of {len(args)} items [{inner}]"
    if expected == "a list" and args:
        return f"{'lists' if plural else 'a list'} of {_describe(args[0], plural=True)}"
    if expected == "an object" and len(args) == 2:
        return f"{'objects' if plural else 'an object'} whose values are {_describe(args[1], plural=True)}"
    base = origin or hint
    return _PLURALS.get(base, expected) if plural else expected


def type_problem(value: Any, hint: Any) -> str | None:
    """What a type hint expects when the JSON ``value`` cannot match it (None when it can or cannot be judged),
    for constructors checking the members of a nested config object against a dataclass or signature."""
    return _type_problem(value, hint)


def _understood(hint: Any) -> bool:
    """Whether :func:`_type_problem` can judge a JSON value against ``hint``."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_understood(o) for o in typing.get_args(hint))
    return _expects(hint) is not None


def _expects(hint: Any) -> str | None:
    base = typing.get_origin(hint) or hint
    if base in _JSON_NAMES:
        return _JSON_NAMES[base]
    if base is tuple:
        return "a list"
    name = getattr(base, "__name__", "")
    if name == "Sequence":
        return "a list"
    if name == "Mapping":
        return "an object"
    return None


MODELS = Registry("MODELS", "model", "called as cls(**args[, num_classes]); returns an nn.Module", builtin=True)
DATA_LOADERS = Registry("DATA_LOADERS", "data loader",
                        "called as cls(**args, training=bool); returns an iterable of batches with "
                        "split_validation()", builtin=True)
LOSSES = Registry("LOSSES", "loss", "called as cls(**args[, cls_num_list]); returns a callable "
                  "(output, target) -> scalar tensor", builtin=True)
METRICS = Registry("METRICS", "metric", "called as cls(**args[, cls_num_list, num_classes]); returns a "
                   "Metric with reset/update/compute", builtin=True)
TRAINERS = Registry("TRAINERS", "trainer", "called as cls(config=ConfigParser, **args); a BaseTrainer subclass",
                    builtin=True)
OPTIMIZERS = Registry("OPTIMIZERS", "optimizer", "called as cls(params, **args); a torch.optim.Optimizer",
                      builtin=True)
SCHEDULERS = Registry("SCHEDULERS", "learning-rate scheduler",
                      "called as cls(optimizer, **args[, total_epochs]); stepped once per epoch", builtin=True)

SAMPLERS = Registry("SAMPLERS", "sampler",
                    "called as cls(targets, **args); a torch Sampler of dataset indices with set_epoch(epoch), "
                    "sharded per rank under DDP", builtin=True)

REGISTRIES = {"models": MODELS, "data_loaders": DATA_LOADERS, "losses": LOSSES, "metrics": METRICS,
              "trainers": TRAINERS, "optimizers": OPTIMIZERS, "schedulers": SCHEDULERS, "samplers": SAMPLERS}
