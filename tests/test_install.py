"""One import name (issue 29): the wheel holds `tapefit` and its dist-info, nothing else
at the top level; installed into a fresh venv it imports and runs from a folder whose own
`model.py`, `flags.py` and `train.py` would break any bare `import model`; `python
train.py` in a checkout runs that checkout's tapefit or says in one line why not.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT
from tests.test_errors import TINY, assert_one_line_error

# What a copy of the checkout leaves out (a developer's runs, caches, earlier builds).
IGNORED = shutil.ignore_patterns(".git", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".ruff_cache", ".hypothesis", ".venv")
# A user's folder: each of these would be what a bare `import model` (flags, train) finds.
DECOYS = ("model.py", "flags.py", "train.py", "loops.py", "callbacks.py")


def _decoy_folder(path):
    path.mkdir()
    for name in DECOYS:
        (path / name).write_text(f"raise ImportError('the user\\'s own {name} was imported')\n")
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel built from a copy of the checkout, installed (no dependencies: this
    environment's TensorFlow is seen through --system-site-packages) into a fresh venv."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel, = (tmp / "dist").glob("tapefit-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return {"wheel": wheel, "venv": venv, "python": python, "tmp": tmp}


def test_the_wheel_holds_one_top_level_name_and_every_module(installed):
    with zipfile.ZipFile(installed["wheel"]) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names} == {"tapefit", "tapefit-0.1.0.dist-info"}
    assert "tapefit = tapefit.__main__:main" in entry_points
    # Every .py file of the package's folders is in it, under tapefit/ (a subpackage missing
    # from setup.cfg's list would be an ImportError only after installing).
    expected = set()
    for folder in ("", "model", "loops", "callbacks", "flags", "input_pipeline", "research",
                   "layout"):
        for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
            if folder == "":
                dirs[:] = []  # The root's own modules only (train.py, ...).
            expected |= {os.path.join("tapefit", os.path.relpath(os.path.join(base, f), ROOT))
                         for f in files if f.endswith(".py")}
    assert expected <= set(names), sorted(expected - set(names))
    assert not any(n.startswith(("tapefit/tests/", "tapefit/bench/")) for n in names)


def test_installed_tapefit_imports_and_trains_from_a_folder_of_decoys(installed, tmp_path):
    folder = _decoy_folder(tmp_path / "notebook")
    code = ("import json, tapefit, tapefit.loops.phases, tapefit.train, tapefit.flags.config; "
            "print(json.dumps({'file': tapefit.__file__, 'bare': [m for m in "
            "('model', 'flags', 'loops', 'callbacks', 'train') "
            "if m in __import__('sys').modules]}))")
    out = subprocess.run([str(installed["python"]), "-c", code], cwd=folder, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["file"].startswith(str(installed["venv"])), seen
    assert seen["bare"] == []
    # The console command, from that folder: a head phase, then its next command's phase.
    tapefit = str(installed["venv"] / "bin" / "tapefit")
    workdir = tmp_path / "run"
    head = subprocess.run([tapefit, "train", "--phase=head", f"--workdir={workdir}", *TINY],
                          cwd=folder, capture_output=True, text=True, timeout=600)
    assert head.returncode == 0, head.stderr
    assert (workdir / "head" / "best.weights.h5").is_file()
    following = subprocess.run([tapefit, "train", "--phase=evaluate", f"--workdir={workdir}",
                                "--verbose=0"], cwd=folder, capture_output=True, text=True,
                               timeout=600)
    assert following.returncode == 0, following.stderr
    assert json.loads((workdir / "evaluate" / "evaluation.json").read_text())["accuracy"] >= 0


def test_the_command_names_its_subcommands_and_refuses_a_misspelt_one(installed, tmp_path):
    tapefit = str(installed["venv"] / "bin" / "tapefit")
    listing = subprocess.run([tapefit], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0
    for name in ("train", "predict", "compare", "sweep"):
        assert f"  {name} " in listing.stdout
    wrong = subprocess.run([tapefit, "trian", "--phase=head"], cwd=_decoy_folder(tmp_path / "d"),
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1
    assert_one_line_error(wrong, "unknown command 'trian' (did you mean train?)")


def test_a_script_of_a_checkout_refuses_another_copys_tapefit(installed, tmp_path):
    """`python train.py` in a second checkout, with the wheel's tapefit installed: it
    would run that tapefit's library under this checkout's script. One line instead."""
    other = tmp_path / "other-checkout"
    shutil.copytree(ROOT, other, ignore=IGNORED)
    out = subprocess.run([str(installed["python"]), "train.py", "--phase=head", *TINY,
                          f"--workdir={tmp_path / 'run'}"], cwd=other, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    assert_one_line_error(out, str(other), "import tapefit` finds", "pip install -e")
    assert not (tmp_path / "run").exists()


def test_a_script_of_a_checkout_without_tapefit_installed_says_how_to_install(tmp_path):
    bare = tmp_path / "bare"  # No site-packages of this environment: no tapefit, no TF.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True,
                   timeout=300)
    out = subprocess.run([str(bare / "bin" / "python"), "train.py", "--phase=head"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert_one_line_error(out, "tapefit is not installed", f"pip install -e {ROOT}")
