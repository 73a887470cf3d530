"""predict.py's output: one escaped line per image (control characters, folders), and
an unreadable file it is given still refused.
"""
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_errors import TINY, assert_one_line_error, run_train


def run_script(script, *argv, timeout=300):
    return subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ---- predict.py: escaped names, folders --------------------------------------------------------

def test_escape_controls_keeps_one_line_and_distinct_names():
    from tapefit.flags.errors import escape_controls
    assert escape_controls("a\tb\nc\rd") == "a\\tb\\nc\\rd"
    assert escape_controls("x\x1b[2Jy\u202ez\u2028") == "x\\x1b[2Jy\\u202ez\\u2028"
    assert escape_controls(b"caf\xff.png") == "caf\\xff.png"
    assert escape_controls("é猫.png") == "é猫.png"
    assert escape_controls("a\\tb", backslash=True) != escape_controls("a\tb", backslash=True)
    for name in ("a\tb", "a\nb", b"\xff\n", "\ud800"):
        assert "\n" not in escape_controls(name) and "\t" not in escape_controls(name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished head run (synthetic 32x32) and a folder of photos, one name forged."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("predict")
    out = run_train(*TINY, f"--workdir={root / 'run'}")
    assert out.returncode == 0, out.stderr[-2000:]
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["a.png", "x\tdog\t0.9999\nforged.png", "sub/b.jpg", "back\\slash.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            photos / name, format="PNG")
    (photos / "broken.png").write_bytes(b"not an image")
    return root, photos, names


def test_predict_prints_one_escaped_line_per_image_of_a_folder(trained):
    """Before: a folder was refused, and a name with a tab and a newline forged a line."""
    root, photos, names = trained
    out = run_script("predict.py", f"--workdir={root / 'run'}", str(photos))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == len(names), out.stdout
    fields = [line.split("\t") for line in lines]
    assert all(len(f) == 3 and f[1] in ("cat", "dog") for f in fields), out.stdout
    printed = {f[0] for f in fields}
    assert f"{photos}/x\\tdog\\t0.9999\\nforged.png" in printed
    assert f"{photos}/back\\\\slash.png" in printed
    assert f"{photos}/sub/b.jpg" in printed
    assert "skipped 1 unreadable" in out.stderr and "broken.png" in out.stderr


def test_predict_still_refuses_an_unreadable_file_it_is_given(trained):
    root, photos, _ = trained
    out = run_script("predict.py", f"--workdir={root / 'run'}", str(photos / "broken.png"))
    assert_one_line_error(out, "broken.png")
    assert out.stdout == ""
