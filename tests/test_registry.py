"""Unit tests for utils.registry.Registry: registration, look-up, argument checking and building.

Every test uses a fresh ``Registry("THINGS", "thing")`` so nothing leaks into the framework's
global registries.
"""
from __future__ import annotations

import re
from typing import Literal, Optional

import pytest

from utils.errors import ConfigError, FrameworkError
from utils.registry import Registry


@pytest.fixture
def reg() -> Registry:
    return Registry("THINGS", "thing")


# --- module-level callables (so their annotations resolve through typing.get_type_hints) -------------


def ResNet32(num_classes: int, in_channels: int = 3, width: int = 16):
    """A CIFAR ResNet-32.

    Second line that describe() must not show.
    """
    return {"depth": 32, "num_classes": num_classes, "in_channels": in_channels, "width": width}


def LeNet5(num_classes: int = 10):
    """LeNet-5."""
    return {"depth": 5, "num_classes": num_classes}


def VGG16():
    return {"depth": 16}


class Typed:
    """A constructor with one parameter per simple JSON type."""

    # `limit` uses typing.Optional on purpose: a typing.Union, not a types.UnionType like the others.
    def __init__(self, count: int = 1, rate: float = 0.1, flag: bool = False,
                 mode: Literal["sum", "mean"] = "mean", limit: Optional[int] = None,  # noqa: UP045
                 name: str = "x", sizes: list[int] | None = None, betas: tuple[float, float] = (0.9, 0.99),
                 extra: dict | None = None, anything=None):
        self.kwargs = dict(count=count, rate=rate, flag=flag, mode=mode, limit=limit, name=name, sizes=sizes,
                           betas=betas, extra=extra, anything=anything)


class IntChoice:
    def __init__(self, version: Literal[1, 2] = 1):
        self.version = version


class Loss:
    """A loss that may receive the class counts."""

    def __init__(self, cls_num_list: list | None = None, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.cls_num_list = cls_num_list
        self.label_smoothing = label_smoothing


class PlainLoss:
    """A loss that takes no class counts."""

    def __init__(self, reduction: str = "mean"):
        self.reduction = reduction


class OpenLoss:
    def __init__(self, scale: float = 1.0, **kwargs):
        self.scale = scale
        self.kwargs = kwargs


class BaseTrainer:
    """Parent whose parameters a **kwargs subclass passes on."""

    def __init__(self, lr: float, epochs: int = 10, monitor: str = "off"):
        self.lr, self.epochs, self.monitor = lr, epochs, monitor


class ChildTrainer(BaseTrainer):
    def __init__(self, cfg: dict, **kwargs):
        self.cfg = cfg
        super().__init__(**kwargs)


class GrandChildTrainer(ChildTrainer):
    def __init__(self, cfg: dict, verbose: bool = False, *args, **kwargs):
        self.verbose = verbose
        super().__init__(cfg, *args, **kwargs)


class InheritsInit(ChildTrainer):
    """No __init__ of its own."""


class OpenBase:
    def __init__(self, a: int = 0, **kwargs):
        self.a, self.kwargs = a, kwargs


class OpenChild(OpenBase):
    def __init__(self, b: int = 0, **kwargs):
        self.b = b
        super().__init__(**kwargs)


def _msg(excinfo) -> str:
    return str(excinfo.value)


# --- registration ------------------------------------------------------------------------------------


def test_register_as_decorator_returns_the_object_and_uses_its_name(reg):
    decorated = reg.register()(ResNet32)
    assert decorated is ResNet32
    assert "ResNet32" in reg
    assert reg.get("ResNet32") is ResNet32
    assert len(reg) == 1

    @reg.register()
    class Local:
        pass

    assert reg.get("Local") is Local
    assert reg.names() == ["Local", "ResNet32"]


def test_register_as_call_and_with_custom_name(reg):
    assert reg.register(LeNet5) is LeNet5
    assert reg.register(ResNet32, name="resnet") is ResNet32

    @reg.register(name="vgg")
    def anything():
        return 1

    assert "LeNet5" in reg and "resnet" in reg and "vgg" in reg
    assert "ResNet32" not in reg and "anything" not in reg
    assert reg.get("vgg") is anything
    assert reg.names() == ["LeNet5", "resnet", "vgg"]
    assert list(reg) == ["LeNet5", "resnet", "vgg"]
    assert reg.items() == [("LeNet5", LeNet5), ("resnet", ResNet32), ("vgg", anything)]
    assert repr(reg) == "Registry('THINGS', 3 entries: LeNet5, resnet, vgg)"
    # the same object may be registered under two names
    reg.register(LeNet5, name="lenet")
    assert reg.get("lenet") is reg.get("LeNet5")


def test_registries_are_independent(reg):
    other = Registry("OTHERS", "other")
    reg.register(ResNet32)
    assert "ResNet32" not in other
    other.register(ResNet32)  # no clash across registries
    assert len(other) == 1 and len(reg) == 1


def test_duplicate_name_raises_key_error_naming_registry_and_both_objects(reg):
    def first():
        pass

    def second():
        pass

    reg.register(first, name="dup")
    with pytest.raises(KeyError) as excinfo:
        reg.register(second, name="dup")
    expected = (f"THINGS: the name 'dup' is already registered (by {first.__module__}.{first.__qualname__}); "
                f"register {second.__module__}.{second.__qualname__} under another name")
    assert excinfo.value.args[0] == expected
    assert "test_duplicate_name_raises_key_error_naming_registry_and_both_objects.<locals>.first" in expected
    assert reg.get("dup") is first  # the first registration is kept

    with pytest.raises(KeyError, match=re.escape("the name 'second' is already registered")):
        reg.register(second)
        reg.register(second)


# --- unknown names -----------------------------------------------------------------------------------


def _three(reg):
    for f in (ResNet32, LeNet5, VGG16):
        reg.register(f)
    return reg


def test_unknown_name_gives_path_close_match_and_full_list(reg):
    _three(reg)
    expected = ("config[\"arch\"][\"type\"]: unknown thing 'ResNet23' in registry THINGS. "
                "Did you mean 'ResNet32' or 'LeNet5'? Registered in THINGS: LeNet5, ResNet32, VGG16. "
                "A class of your own must be registered with @THINGS.register() in a module listed "
                "under \"plugins\".")
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.build({"type": "ResNet23", "args": {"num_classes": 10}}, ("arch",))
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.check({"type": "ResNet23"}, ("arch",))
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.get("ResNet23", ("arch", "type"))


def test_unknown_name_without_close_match_has_no_hint(reg):
    _three(reg)
    with pytest.raises(ConfigError) as excinfo:
        reg.build({"type": "Transformer"}, ("arch",))
    msg = _msg(excinfo)
    assert msg.startswith("config[\"arch\"][\"type\"]: unknown thing 'Transformer' in registry THINGS. "
                          "Registered in THINGS: LeNet5, ResNet32, VGG16.")
    assert "Did you mean" not in msg


def test_unknown_name_in_empty_registry_and_without_path(reg):
    with pytest.raises(ConfigError, match=re.escape("unknown thing 'X' in registry THINGS. Registered in "
                                                    "THINGS: (none).")) as excinfo:
        reg.get("X")
    assert not _msg(excinfo).startswith("config")


def test_list_index_in_path(reg):
    _three(reg)
    with pytest.raises(ConfigError, match=re.escape('config["metrics"][2]["type"]: unknown thing')):
        reg.check({"type": "nope"}, ("metrics", 2))


@pytest.mark.parametrize("bad", [None, 3, ["ResNet32"], {"name": "ResNet32"}])
def test_non_string_type(reg, bad):
    _three(reg)
    expected = (f'config["arch"]["type"]: the thing type must be a string naming a registered thing, '
                f"got {bad!r}. Registered in THINGS: LeNet5, ResNet32, VGG16")
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.check({"type": bad, "args": {}}, ("arch",))


def test_config_error_is_a_framework_error():
    assert issubclass(ConfigError, FrameworkError)


# --- argument names ----------------------------------------------------------------------------------


def test_misspelled_argument(reg):
    _three(reg)
    expected = ('config["arch"]["args"]["num_clases"]: ResNet32 has no argument \'num_clases\'. '
                "Did you mean 'num_classes' or 'in_channels'? Valid arguments: num_classes, in_channels, width")
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.build({"type": "ResNet32", "args": {"num_clases": 10}}, ("arch",))


def test_misspelled_argument_without_close_match_and_no_valid_arguments(reg):
    _three(reg)
    with pytest.raises(ConfigError) as excinfo:
        reg.check({"type": "ResNet32", "args": {"num_classes": 10, "zzz": 1}}, ("arch",))
    assert _msg(excinfo) == ('config["arch"]["args"]["zzz"]: ResNet32 has no argument \'zzz\'. '
                             "Valid arguments: num_classes, in_channels, width")
    with pytest.raises(ConfigError) as excinfo:
        reg.check({"type": "VGG16", "args": {"depth": 16}}, ("arch",))
    assert _msg(excinfo) == ('config["arch"]["args"]["depth"]: VGG16 has no argument \'depth\'. '
                             "Valid arguments: (none)")


def test_runtime_arguments_are_hidden_from_valid_arguments(reg):
    _three(reg)
    with pytest.raises(ConfigError) as excinfo:
        reg.build({"type": "ResNet32", "args": {"widht": 4}}, ("arch",), num_classes=10)
    assert _msg(excinfo) == ('config["arch"]["args"]["widht"]: ResNet32 has no argument \'widht\'. '
                             "Did you mean 'width'? Valid arguments: in_channels, width")


def test_var_keyword_accepts_any_name(reg):
    reg.register(OpenLoss)
    built = reg.build({"type": "OpenLoss", "args": {"scale": 2, "whatever": [1, 2]}}, ("loss",))
    assert built.scale == 2 and built.kwargs == {"whatever": [1, 2]}
    # named parameters are still type-checked
    with pytest.raises(ConfigError, match=re.escape('config["loss"]["args"]["scale"]: OpenLoss expects a number')):
        reg.check({"type": "OpenLoss", "args": {"scale": "2"}}, ("loss",))


# --- argument types ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("count", 3), ("count", -1),
    ("rate", 0.5), ("rate", 1), ("rate", 0),  # an int is accepted for a float
    ("flag", True), ("flag", False),
    ("mode", "sum"), ("mode", "mean"),
    ("limit", None), ("limit", 7),
    ("name", "abc"),
    ("sizes", [1, 2]), ("sizes", None),
    ("betas", [0.9, 0.999]),  # JSON has no tuples: a list is fine
    ("extra", {"a": 1}), ("extra", None),
    ("anything", {"no": "annotation"}),
])
def test_accepted_types(reg, key, value):
    reg.register(Typed)
    reg.check({"type": "Typed", "args": {key: value}}, ("thing",))
    built = reg.build({"type": "Typed", "args": {key: value}}, ("thing",))
    assert built.kwargs[key] == value


@pytest.mark.parametrize("key, value, expects", [
    ("count", "3", "an integer, got str '3'"),
    ("count", 3.0, "an integer, got float 3.0"),
    ("count", True, "an integer, got bool True"),  # bool is not an int in a config
    ("count", None, "an integer, got NoneType None"),
    ("rate", "0.1", "a number, got str '0.1'"),
    ("rate", True, "a number, got bool True"),
    ("rate", [0.1], "a number, got list [0.1]"),
    ("flag", 1, "true or false, got int 1"),
    ("flag", "true", "true or false, got str 'true'"),
    ("mode", "max", "one of 'sum', 'mean', got str 'max'"),
    ("mode", None, "one of 'sum', 'mean', got NoneType None"),
    ("limit", "7", "an integer or null, got str '7'"),
    ("limit", 7.5, "an integer or null, got float 7.5"),
    ("limit", False, "an integer or null, got bool False"),
    ("name", 5, "a string, got int 5"),
    ("sizes", 3, "a list or null, got int 3"),
    ("betas", 0.9, "a list, got float 0.9"),
    ("extra", [1], "an object or null, got list [1]"),
])
def test_rejected_types(reg, key, value, expects):
    reg.register(Typed)
    expected = f'config["thing"]["args"]["{key}"]: Typed expects {expects}'
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.check({"type": "Typed", "args": {key: value}}, ("thing",))
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.build({"type": "Typed", "args": {key: value}}, ("thing",))


def test_literal_of_ints_accepts_its_values(reg):
    reg.register(IntChoice)
    assert reg.build({"type": "IntChoice", "args": {"version": 2}}).version == 2
    with pytest.raises(ConfigError, match=re.escape("IntChoice expects one of 1, 2, got int 3")):
        reg.check({"type": "IntChoice", "args": {"version": 3}})


@pytest.mark.parametrize("value", [True, 1.0])
def test_literal_of_ints_rejects_bool_and_float(reg, value):
    reg.register(IntChoice)
    with pytest.raises(ConfigError, match=re.escape("IntChoice expects one of 1, 2")):
        reg.check({"type": "IntChoice", "args": {"version": value}})


# --- required / supplied / runtime / optional ---------------------------------------------------------


def test_missing_required_argument(reg):
    _three(reg)
    expected = 'config["arch"]["args"]: ResNet32 needs argument(s) \'num_classes\'; add them to "args"'
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.check({"type": "ResNet32", "args": {"width": 8}}, ("arch",))
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.build({"type": "ResNet32"}, ("arch",))
    # supplied at run time: not missing
    assert reg.check({"type": "ResNet32", "args": {"width": 8}}, ("arch",), supplied=("num_classes",)) is ResNet32
    assert reg.build({"type": "ResNet32", "args": {"width": 8}}, ("arch",), num_classes=7) == {
        "depth": 32, "num_classes": 7, "in_channels": 3, "width": 8}
    assert reg.build({"type": "ResNet32"}, ("arch",), optional={"num_classes": 5})["num_classes"] == 5


def test_several_missing_arguments_are_all_named(reg):
    def two(a: int, b: int, c: int = 0):
        return a + b + c

    reg.register(two)
    with pytest.raises(ConfigError, match=re.escape("two needs argument(s) 'a', 'b'; add them")):
        reg.check({"type": "two"}, ("x",))
    with pytest.raises(ConfigError, match=re.escape("two needs argument(s) 'b'; add them")):
        reg.check({"type": "two", "args": {"a": 1}}, ("x",))
    assert reg.build({"type": "two", "args": {"a": 1, "b": 2, "c": 3}}, ("x",)) == 6


def test_runtime_argument_clashing_with_config_argument(reg):
    _three(reg)
    # the path may or may not name the argument itself; the rest of the text is pinned
    pattern = (r'^config\["arch"\]\["args"\](\["num_classes"\])?: \'?num_classes\'? is set by the framework '
               r"for ResNet32; remove it from the config$")
    with pytest.raises(ConfigError, match=pattern):
        reg.build({"type": "ResNet32", "args": {"num_classes": 10}}, ("arch",), num_classes=10)
    # a clash is a clash even when the config value has the wrong type or the same value
    with pytest.raises(ConfigError, match=pattern):
        reg.build({"type": "ResNet32", "args": {"num_classes": 7, "width": 4}}, ("arch",), num_classes=7)
    with pytest.raises(ConfigError, match="is set by the framework for ResNet32"):
        reg.build({"type": "ResNet32", "args": {"num_classes": "ten"}}, ("arch",), num_classes=10)


def test_optional_values_passed_only_when_accepted_and_not_set(reg):
    reg.register(Loss)
    reg.register(PlainLoss)
    reg.register(OpenLoss)
    counts = [50, 10, 2]
    # the callee takes cls_num_list and the config does not set it: passed
    assert reg.build({"type": "Loss"}, ("loss",), optional={"cls_num_list": counts}).cls_num_list == counts
    # the config sets it: the config wins
    built = reg.build({"type": "Loss", "args": {"cls_num_list": [1, 1, 1]}}, ("loss",),
                      optional={"cls_num_list": counts})
    assert built.cls_num_list == [1, 1, 1]
    # the callee has no such parameter: not passed (no TypeError)
    assert reg.build({"type": "PlainLoss"}, ("loss",), optional={"cls_num_list": counts}).reduction == "mean"
    # the callee takes **kwargs: passed
    assert reg.build({"type": "OpenLoss"}, ("loss",), optional={"cls_num_list": counts}).kwargs == {
        "cls_num_list": counts}


def test_optional_values_for_functions(reg):
    def metric(num_classes: int, k: int = 5):
        return (num_classes, k)

    reg.register(metric)
    assert reg.build({"type": "metric", "args": {"k": 1}}, ("metrics", 0),
                     optional={"num_classes": 10, "cls_num_list": [3, 2]}) == (10, 1)


# --- errors inside the constructor -------------------------------------------------------------------


def test_value_error_in_constructor_becomes_config_error(reg):
    reg.register(Loss)
    expected = 'config["loss"] (Loss): label_smoothing must be in [0, 1), got 1.5'
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$") as excinfo:
        reg.build({"type": "Loss", "args": {"label_smoothing": 1.5}}, ("loss",))
    assert isinstance(excinfo.value.__cause__, ValueError)


def test_config_error_and_other_errors_in_constructor_are_not_rewrapped(reg):
    def raises_config():
        raise ConfigError("inner message")

    def raises_type():
        raise TypeError("a bug")

    reg.register(raises_config)
    reg.register(raises_type)
    with pytest.raises(ConfigError, match="^inner message$"):
        reg.build({"type": "raises_config"}, ("x",))
    with pytest.raises(TypeError, match="^a bug$"):
        reg.build({"type": "raises_type"}, ("x",))


# --- **kwargs subclasses -----------------------------------------------------------------------------


def test_subclass_with_kwargs_builds_with_parent_arguments(reg):
    reg.register(ChildTrainer)
    built = reg.build({"type": "ChildTrainer", "args": {"lr": 0.1, "epochs": 3}}, ("trainer",), cfg={"a": 1})
    assert (built.cfg, built.lr, built.epochs, built.monitor) == ({"a": 1}, 0.1, 3, "off")


def test_subclass_with_kwargs_catches_misspelled_parent_argument(reg):
    reg.register(ChildTrainer)
    expected = ('config["trainer"]["args"]["epoch"]: ChildTrainer has no argument \'epoch\'. '
                "Did you mean 'epochs'? Valid arguments: lr, epochs, monitor")
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.build({"type": "ChildTrainer", "args": {"lr": 0.1, "epoch": 3}}, ("trainer",), cfg={})
    # without the runtime cfg the subclass's own parameter is listed too
    with pytest.raises(ConfigError, match=re.escape("Valid arguments: cfg, lr, epochs, monitor")):
        reg.check({"type": "ChildTrainer", "args": {"lr": 0.1, "epoch": 3}}, ("trainer",))


def test_subclass_with_kwargs_catches_wrong_type_of_parent_argument(reg):
    reg.register(ChildTrainer)
    expected = 'config["trainer"]["args"]["epochs"]: ChildTrainer expects an integer, got str \'3\''
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.build({"type": "ChildTrainer", "args": {"lr": 0.1, "epochs": "3"}}, ("trainer",), cfg={})
    with pytest.raises(ConfigError, match=re.escape("ChildTrainer expects a number, got bool True")):
        reg.check({"type": "ChildTrainer", "args": {"lr": True}}, ("trainer",), supplied=("cfg",))


def test_subclass_with_kwargs_reports_missing_parent_argument(reg):
    reg.register(ChildTrainer)
    with pytest.raises(ConfigError, match=re.escape("ChildTrainer needs argument(s) 'lr'")):
        reg.check({"type": "ChildTrainer", "args": {}}, ("trainer",), supplied=("cfg",))


def test_two_levels_of_kwargs_and_inherited_init(reg):
    reg.register(GrandChildTrainer)
    reg.register(InheritsInit)
    built = reg.build({"type": "GrandChildTrainer", "args": {"verbose": True, "lr": 0.5, "monitor": "min loss"}},
                      ("trainer",), cfg={})
    assert (built.verbose, built.lr, built.monitor) == (True, 0.5, "min loss")
    with pytest.raises(ConfigError, match=re.escape("Did you mean 'monitor'? Valid arguments: verbose, lr, "
                                                    "epochs, monitor")):
        reg.build({"type": "GrandChildTrainer", "args": {"lr": 0.5, "moniter": "x"}}, ("trainer",), cfg={})
    with pytest.raises(ConfigError, match=re.escape("GrandChildTrainer expects true or false, got int 1")):
        reg.check({"type": "GrandChildTrainer", "args": {"lr": 0.5, "verbose": 1}}, ("trainer",), supplied=("cfg",))
    # a class without its own __init__ is checked against the inherited chain
    with pytest.raises(ConfigError, match=re.escape("InheritsInit has no argument 'epoch'. Did you mean 'epochs'?")):
        reg.check({"type": "InheritsInit", "args": {"lr": 0.5, "epoch": 1}}, ("trainer",), supplied=("cfg",))


def test_kwargs_chain_left_open_accepts_anything_but_checks_known_types(reg):
    reg.register(OpenChild)
    built = reg.build({"type": "OpenChild", "args": {"a": 1, "b": 2, "c": 3}}, ("x",))
    assert (built.a, built.b, built.kwargs) == (1, 2, {"c": 3})
    with pytest.raises(ConfigError, match=re.escape('config["x"]["args"]["a"]: OpenChild expects an integer')):
        reg.check({"type": "OpenChild", "args": {"a": "1"}}, ("x",))


# --- spec form ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("ResNet32", 'config["arch"]: expected an object {"type": NAME, "args": {...}}, got str \'ResNet32\''),
    (["ResNet32"], 'config["arch"]: expected an object {"type": NAME, "args": {...}}, got list [\'ResNet32\']'),
    (None, 'config["arch"]: expected an object {"type": NAME, "args": {...}}, got NoneType None'),
    ({"args": {}}, 'config["arch"]: missing "type"; registered in THINGS: LeNet5, ResNet32, VGG16'),
    ({"type": "ResNet32", "args": {"num_classes": 1}, "arg": {}},
     'config["arch"]: unknown key(s) [\'arg\']; a component has only "type" and "args" '
     '(put constructor arguments inside "args")'),
    ({"type": "ResNet32", "num_classes": 1, "width": 2},
     'config["arch"]: unknown key(s) [\'num_classes\', \'width\']; a component has only "type" and "args" '
     '(put constructor arguments inside "args")'),
    ({"type": "ResNet32", "args": [10]},
     'config["arch"]["args"]: "args" must be an object of argument names to values, got list'),
    ({"type": "ResNet32", "args": "num_classes=10"},
     'config["arch"]["args"]: "args" must be an object of argument names to values, got str'),
])
def test_spec_form_errors(reg, spec, expected):
    _three(reg)
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.check(spec, ("arch",))
    with pytest.raises(ConfigError, match="^" + re.escape(expected) + "$"):
        reg.build(spec, ("arch",), num_classes=10)


def test_args_may_be_missing_or_null(reg):
    _three(reg)
    assert reg.build({"type": "LeNet5"}, ("arch",)) == {"depth": 5, "num_classes": 10}
    assert reg.build({"type": "LeNet5", "args": None}, ("arch",)) == {"depth": 5, "num_classes": 10}
    assert reg.build({"type": "LeNet5", "args": {}}, ("arch",)) == {"depth": 5, "num_classes": 10}
    assert reg.check({"type": "VGG16", "args": None}, ("arch",)) is VGG16


def test_check_does_not_build(reg):
    calls = []

    def counted(x: int = 0):
        calls.append(x)

    reg.register(counted)
    assert reg.check({"type": "counted", "args": {"x": 1}}, ("x",)) is counted
    assert calls == []
    reg.build({"type": "counted", "args": {"x": 1}}, ("x",))
    assert calls == [1]


# --- describe ----------------------------------------------------------------------------------------


def test_describe_gives_first_docstring_lines(reg):
    _three(reg)
    reg.register(Typed)
    assert reg.describe() == [
        ("LeNet5", "LeNet-5."),
        ("ResNet32", "A CIFAR ResNet-32."),
        ("Typed", "A constructor with one parameter per simple JSON type."),
        ("VGG16", ""),
    ]


def test_describe_empty_registry(reg):
    assert reg.describe() == []
