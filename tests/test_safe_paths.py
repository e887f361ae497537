"""Output names and paths (utils/safe_paths.py), and NMRDenoiseTrainer._write, which writes <save_dir>/<name>.*"""
from __future__ import annotations

import numpy as np
import pytest
from fuzz_data import PATH_LIKE_NAMES

from trainer.nmr_denoise import NMRDenoiseTrainer
from utils.errors import DataError
from utils.parsing import ascii_int
from utils.safe_paths import NAME_RULE, check_name, name_problem, path_inside


def write(out, name: str) -> None:
    """What test.py --save_dir does for one group (the method uses nothing of the trainer)."""
    NMRDenoiseTrainer._write(None, out, name, np.ones(8), np.ones(8), np.ones(8), np.linspace(8, 1, 8))


@pytest.mark.parametrize("name", PATH_LIKE_NAMES)
def test_trainer_writes_no_output_for_a_name_that_is_not_a_plain_file_name(tmp_path, name):
    """'../../x' and '/abs/x' wrote x.npz / x.png outside --save_dir (creating parents); '' a hidden '.npz'."""
    out = tmp_path / "run" / "save"
    out.mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DataError, match="output name .* is refused"):
        write(out, name)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no directory created


def test_trainer_writes_plain_names_inside_save_dir(tmp_path):
    write(tmp_path, "sucrose_ns4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sucrose_ns4.npz", "sucrose_ns4.png"]
    with np.load(tmp_path / "sucrose_ns4.npz") as saved:
        assert sorted(saved.files) == ["denoised", "ppm"]


def test_an_output_that_is_a_link_out_of_save_dir_is_refused(tmp_path):
    out, elsewhere = tmp_path / "save", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "g.npz").symlink_to(elsewhere / "g.npz")
    with pytest.raises(DataError, match=f"resolves to {elsewhere / 'g.npz'}, outside {out}"):
        write(out, "g")
    assert not (elsewhere / "g.npz").exists()


def test_name_rule():
    for name in ("sucrose_ns4", "a", "A.b-c_d", "_x", "0", "x" * 100):
        assert name_problem(name) is None
        assert path_inside("/tmp", name, ".npz").name == f"{name}.npz"
    assert name_problem("x" * 101) == "it has 101 characters"
    assert name_problem("a/b") == "it contains '/'"
    assert name_problem(".a") == "it starts with '.'"
    assert name_problem("") == "it is empty"
    assert name_problem(None) == "it is a NoneType, not a string"
    with pytest.raises(DataError, match=f"^here: group name 'a\\\\nb' is refused \\(it contains '\\\\n'\\); "
                                        f"{NAME_RULE[:20]}"):
        check_name("a\nb", "here", "group name")


@pytest.mark.parametrize("text, value", [("0", 0), ("17", 17), ("-3", -3), ("007", 7), ("9" * 18, 10 ** 18 - 1),
                                         ("9" * 19, None), ("\u0661", None), ("\uff12", None), ("1\n", None),
                                         (" 1", None), ("+1", None), ("1_0", None), ("", None), ("-", None)])
def test_ascii_int(text, value):
    assert ascii_int(text) == value
