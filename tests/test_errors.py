"""Every user error: one line naming the fix, non-zero exit, no traceback, nothing overwritten."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TINY = ["--backbone=mobilenet", "--alpha=0.25", "--weights=none", "--image_size=32",
        "--dataset=synthetic", "--synthetic_examples=16", "--batch_size=8", "--epochs=1",
        "--verbose=0"]


def run_train(*argv):
    return subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(out, *fragments):
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("argv,fragments", [
    (["--phase=finetune", "--unfreeze_from=conv_dw_99"], None),  # needs a head run first
    (["--data_dir=/nonexistent/images"], ["/nonexistent/images"]),
    (["--image_size=16"], ["--image_size=16 is too small", "--image_size=32"]),
    (["--batch_size=0"], ["--batch_size=0 must be in [1, 2**16]"]),
    (["--weights=/nonexistent.h5"], ["--weights=none"]),
])
def test_errors_are_one_line(tmp_path, argv, fragments):
    out = run_train(*TINY, f"--workdir={tmp_path}", *argv)
    assert_one_line_error(out, *(fragments or []))
    assert not os.path.exists(tmp_path / "head")


def test_finetune_without_head_checkpoint_names_the_head_command(tmp_path):
    out = run_train(*TINY, f"--workdir={tmp_path}", "--phase=finetune")
    assert_one_line_error(out, "--phase=head", "--init_checkpoint")


def test_unknown_layer_lists_the_layers_and_overwrites_nothing(tmp_path):
    assert run_train(*TINY, f"--workdir={tmp_path}").returncode == 0
    best = tmp_path / "head" / "best.weights.h5"
    before = best.read_bytes()
    out = run_train(*TINY, f"--workdir={tmp_path}", "--phase=finetune",
                    "--unfreeze_from=conv_dw_99")
    assert_one_line_error(out, "'conv_dw_99'", "block_12", "block_13")
    assert best.read_bytes() == before
    assert not (tmp_path / "finetune").exists()


def test_rerunning_a_finished_phase_says_how_to_start_over(tmp_path):
    assert run_train(*TINY, f"--workdir={tmp_path}").returncode == 0
    out = run_train(*TINY, f"--workdir={tmp_path}")
    assert_one_line_error(out, "is finished", "--overwrite")


@pytest.mark.parametrize("flag,choices", [
    ("--backbone=resnet", ["vgg16", "mobilenet"]),
    ("--optimizer=adamw", ["adam", "sgd", "rmsprop"]),
    ("--lr_schedule=linear", ["constant", "step", "exponential", "cosine"]),
    ("--phase=pretrain", ["head", "finetune", "evaluate"]),
])
def test_unknown_choices_list_the_valid_ones(tmp_path, flag, choices):
    out = run_train(*TINY, f"--workdir={tmp_path}", flag)
    assert_one_line_error(out, flag.split("=")[1], *choices)


def test_workdir_that_cannot_be_created_is_an_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = run_train(*TINY, f"--workdir={blocker}/run")
    assert_one_line_error(out, "--workdir", "writable")


def test_incompatible_weights_file_is_an_error(tmp_path):
    import keras
    path = str(tmp_path / "vgg.weights.h5")
    keras.applications.VGG16(include_top=False, weights=None,
                             input_shape=(32, 32, 3)).save_weights(path)
    out = run_train(*TINY, f"--workdir={tmp_path}", f"--weights={path}")
    assert_one_line_error(out, "does not fit mobilenet")


@pytest.mark.parametrize("flags", [
    ["--feature_cache=disk", "--feature_cache_dir={blocker}/features"],
    ["--image_cache=disk", "--image_cache_dir={blocker}/images"],
])
def test_cache_dir_that_cannot_be_created_is_an_error_before_writing(tmp_path, flags):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    workdir = tmp_path / "w"
    out = run_train(*TINY, f"--workdir={workdir}", *(f.format(blocker=blocker) for f in flags))
    assert_one_line_error(out, flags[1].split("=")[0], "writable")
    assert not workdir.exists()


def test_sweep_checks_its_cache_dir_before_writing(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    workdir = tmp_path / "study"
    out = subprocess.run([sys.executable, "sweep.py", f"--workdir={workdir}", *TINY,
                          "--seeds=0", "--phases=head", "--feature_cache=disk",
                          f"--feature_cache_dir={blocker}/features"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert_one_line_error(out, "--feature_cache_dir", "writable")
    assert not workdir.exists()


def test_read_only_file_system_is_refused_even_for_root(tmp_path, monkeypatch):
    from tapefit.flags.errors import ConfigError
    from tapefit.loops.rundir import run_dir

    class ReadOnly:
        f_flag = os.ST_RDONLY

    run_dir.check_writable(str(tmp_path / "new"))  # Writable: no error.
    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(ConfigError, match="read-only file system"):
        run_dir.check_writable(str(tmp_path / "new"), "--feature_cache_dir")
