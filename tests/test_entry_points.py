"""What the entry points refuse before running: compare.py's arguments, a --workdir on
a pseudo file system, absl's --flagfile (a bounded regular file). One line, exit 1.
"""
import os
import subprocess
import sys

import pytest

from tapefit.flags.config import ConfigError
from tests.conftest import ROOT
from tests.test_errors import TINY, assert_one_line_error


def run_script(script, *argv, timeout=300):
    return subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ---- compare.py --------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,fragment", [
    ("--tolerance=nan", "--tolerance=nan must be in [0, 1]"),
    ("--tolerance=-1", "--tolerance=-1.0 must be in [0, 1]"),
    ("--phase=lr_find", "--phase=lr_find trains nothing that is kept"),
    ("--phase=evaluate", "--phase=head or --phase=finetune"),
])
def test_compare_refuses_what_it_cannot_compare_before_running(tmp_path, flag, fragment):
    """Before: --tolerance=nan|-1 ran both loops, then said DIFFERENT at difference 0;
    --phase=lr_find was accepted."""
    out = run_script("compare.py", *TINY, f"--workdir={tmp_path / 'run'}", flag)
    assert out.returncode == 1
    assert_one_line_error(out, fragment)
    assert not (tmp_path / "run").exists()


# ---- --workdir on a pseudo file system ---------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("script,argv", [
    ("train.py", TINY), ("train.py", [*TINY, "--phase=lr_find"]),
    ("compare.py", TINY),
])
def test_workdir_under_proc_is_one_line(script, argv):
    """Before: a FileNotFoundError traceback from os.makedirs (root may 'write' /proc)."""
    out = run_script(script, *argv, "--workdir=/proc/tapefit-x")
    assert out.returncode == 1
    assert_one_line_error(out, "--workdir=/proc/tapefit-x", "pseudo file system")


# ---- --flagfile --------------------------------------------------------------------------------

@pytest.mark.parametrize("script,kind", [
    *[(script, "fifo") for script in ("train.py", "compare.py", "predict.py", "sweep.py")],
    *[("train.py", kind) for kind in ("dev_zero", "nested_fifo", "huge", "binary")],
])
def test_flagfile_is_a_bounded_regular_file(tmp_path, script, kind):
    """Before: a FIFO hung and /dev/zero read until memory ran out (absl reads it whole)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = {"fifo": fifo, "dev_zero": "/dev/zero", "nested_fifo": tmp_path / "outer.flags",
            "huge": tmp_path / "huge.flags", "binary": tmp_path / "binary.flags"}[kind]
    (tmp_path / "outer.flags").write_text(f"--batch_size=8\n--flagfile={fifo}\n")
    with open(tmp_path / "huge.flags", "wb") as f:
        f.truncate(2 << 20)
    (tmp_path / "binary.flags").write_bytes(b"--batch_size=8\n\xff\xfe\n")
    out = run_script(script, f"--flagfile={path}", f"--workdir={tmp_path / 'run'}",
                     timeout=120)
    assert out.returncode == 1
    assert_one_line_error(out, "--flagfile=")
    assert not (tmp_path / "run").exists()


def test_flagfile_that_is_a_regular_file_still_works(tmp_path):
    from tapefit.loops.entry import check_flagfiles
    inner = tmp_path / "inner.flags"
    inner.write_text("--batch_size=8\n")
    outer = tmp_path / "outer.flags"
    outer.write_text(f"# comment\n--flagfile={inner}\n--flagfile={outer}\n")  # a cycle too
    check_flagfiles([f"--flagfile={outer}", "--flagfile", str(inner)])
    with pytest.raises(ConfigError, match="not a regular file"):
        check_flagfiles(["--flagfile", str(tmp_path)])
    check_flagfiles(["--", "--flagfile=/dev/zero"])  # After --, not a flag.
