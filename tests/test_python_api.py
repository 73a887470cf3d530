"""tapefit from Python (issue 29): one resolver for the command line, the sweep's grid and
Python callers; misspelt or wrong-typed keywords are one-line `ConfigError`s; head,
finetune, evaluate, classify and a study run from Python write the same files as the
commands and return their results as objects.
"""
import csv
import json
import os
import subprocess
import sys

import pytest
from absl import flags as absl_flags

import tapefit
from tapefit.flags import definitions
from tapefit.flags.config import Config, ConfigError
from tests.conftest import ROOT, h5_datasets

FLAGS = dict(backbone="mobilenet", alpha=0.25, weights="none", image_size=32,
             dataset="synthetic", synthetic_examples=24, batch_size=8, epochs=1, verbose=0,
             deterministic=True, unfreeze_from="conv_dw_13")


def _command_line(*argv) -> Config:
    """The Config `tapefit train ARGV` resolves to (its own absl flags)."""
    values = absl_flags.FlagValues()
    definitions.define_flags(values)
    values(["tapefit train", *argv])
    return definitions.config_from_flags(values)


# ---- one resolver --------------------------------------------------------------------------

@pytest.mark.parametrize("argv,keywords", [
    (["--recipe=tuned"], dict(recipe="tuned")),
    (["--recipe=tuned", "--phase=finetune"], dict(recipe="tuned", phase="finetune")),
    # Given explicitly at its plain default: the recipe does not change it.
    (["--recipe=tuned", "--lr_schedule=constant"], dict(recipe="tuned", lr_schedule="constant")),
    (["--recipe=tuned", "--phase=lr_find", "--for_phase=finetune"],
     dict(recipe="tuned", phase="lr_find", for_phase="finetune")),
    (["--learning_rate=3e-4", "--epochs=4"], dict(learning_rate=3e-4, epochs=4)),
])
def test_python_resolves_as_the_command_line(argv, keywords):
    """Before: Config(recipe="tuned") trained the classic recipe (the recipe was applied
    in flags/definitions.py only)."""
    assert tapefit.config(**keywords) == _command_line(*argv) == Config(**keywords)


def test_the_tuned_recipe_is_applied_per_phase_and_a_resolved_config_stays():
    head = Config(recipe="tuned")
    assert (head.lr_schedule, head.learning_rate, head.label_smoothing) == ("one_cycle", 1e-2,
                                                                            0.1)
    finetune = tapefit.config(recipe="tuned", phase="finetune")
    assert (finetune.learning_rate, finetune.layer_lr_decay, finetune.weight_decay) == (
        1e-3, 0.7, 0.01)
    kept = tapefit.config(recipe="tuned", lr_schedule="constant")
    # replace() and config.json's round trip keep every value (no second application).
    assert kept.replace(verbose=0).lr_schedule == "constant"
    assert Config.from_json(kept.to_json()) == kept


def test_the_sweep_grid_resolves_with_the_same_resolver():
    from tapefit.research import grid
    base = Config().replace(recipe="tuned")
    study = grid.make_study(base, "head,finetune", [grid.parse_axis("head.learning_rate=0.05")],
                            "0", explicit=("recipe",))
    trial = grid.expand(study, "/tmp/s")[0]
    assert trial.config("head") == tapefit.config(
        **{**trial.config("head").to_dict(), "learning_rate": 0.05})
    ft = trial.config("finetune")
    assert (ft.learning_rate, ft.layer_lr_decay) == (1e-3, 0.7)  # The recipe's, not the axis'.


@pytest.mark.parametrize("keywords,fragments", [
    (dict(lerning_rate=1e-3), ["unknown flag --lerning_rate", "did you mean --learning_rate?"]),
    (dict(epoch=3), ["unknown flag --epoch", "did you mean --epochs?"]),
    (dict(epochs="ten"), ["--epochs=ten must be a whole number"]),
    (dict(epochs=2.5), ["--epochs=2.5 must be a whole number"]),
    (dict(deterministic="yes"), ["--deterministic='yes' must be True or False"]),
    (dict(backbone=16), ["--backbone=16 must be text"]),
    (dict(recipe="tunde"), ["unknown --recipe='tunde'", "classic, tuned"]),
])
def test_a_misspelt_or_wrong_typed_keyword_is_one_config_error(keywords, fragments):
    for build in (tapefit.config, Config, tapefit.head):
        with pytest.raises(ConfigError) as caught:
            build(**keywords)
        message = str(caught.value)
        assert "\n" not in message
        for fragment in fragments:
            assert fragment in message, message


def test_a_config_and_keywords_together_or_the_wrong_phase_is_refused(tmp_path):
    cfg = tapefit.config(workdir=str(tmp_path), **FLAGS)
    with pytest.raises(ConfigError, match="not both"):
        tapefit.head(cfg, epochs=3)
    with pytest.raises(ConfigError, match="tapefit.finetune runs --phase=finetune, not "
                                          "--phase=head"):
        tapefit.finetune(cfg)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("command", ["train", "predict", "sweep", "compare"])
def test_importing_tapefit_loads_no_tensorflow_and_a_command_module_hides_no_function(command):
    """The functions are not named after the commands' modules (`tapefit.train` is
    train.py): importing one must leave `tapefit.head`, ... the functions."""
    code = ("import sys, tapefit; assert 'tensorflow' not in sys.modules, 'tf'; "
            f"import tapefit.{command}; "
            "assert all(callable(getattr(tapefit, n)) for n in ('config', 'run', 'head', "
            "'finetune', 'evaluate', 'lr_find', 'classify', 'load_model', 'study')); "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---- the phases from Python: the command line's files, results as objects -----------------

def _cli(*argv, cwd=ROOT):
    out = subprocess.run([sys.executable, "train.py", *argv], cwd=cwd, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out


def _flags_argv(workdir):
    return [f"--workdir={workdir}", *(f"--{k}={v}" for k, v in FLAGS.items())]


def test_head_finetune_evaluate_classify_from_python_equal_the_commands(tmp_path):
    cli, py = tmp_path / "cli", tmp_path / "py"
    for phase in ("head", "finetune", "evaluate"):
        _cli(f"--phase={phase}", *_flags_argv(cli))
    head = tapefit.head(workdir=str(py), **FLAGS)
    finetune = tapefit.finetune(workdir=str(py), **FLAGS)
    evaluated = tapefit.evaluate(workdir=str(py), **FLAGS)
    for phase in ("head", "finetune"):
        for name in ("best.weights.h5", "final.weights.h5"):
            ours, theirs = (h5_datasets(d / phase / name) for d in (py, cli))
            assert ours.keys() == theirs.keys()
            assert all((ours[k] == theirs[k]).all() for k in ours), (phase, name)
        assert (py / phase / "log.csv").read_bytes() == (cli / phase / "log.csv").read_bytes()
        configs = [json.loads((d / phase / "config.json").read_text()) for d in (py, cli)]
        assert {**configs[0], "workdir": None} == {**configs[1], "workdir": None}
    # The objects: the summary as summary.json, the model, the epochs of log.csv.
    assert head.summary == json.loads((py / "head" / "summary.json").read_text())
    assert head.model is not None and len(head.history) == FLAGS["epochs"]
    assert head.metrics["val_loss"] == pytest.approx(head.history[-1]["val_loss"], rel=1e-6)
    assert finetune.config.phase == "finetune" and finetune.run_dir == str(py / "finetune")
    on_disk = json.loads((cli / "evaluate" / "evaluation.json").read_text())
    assert evaluated.metrics["accuracy"] == on_disk["accuracy"]
    assert evaluated.metrics["loss"] == on_disk["loss"]
    # classify = tapefit predict, line for line.
    image = tmp_path / "photo.png"
    import numpy as np
    from PIL import Image
    Image.fromarray((np.arange(48 * 48 * 3) % 251).astype("uint8").reshape(48, 48, 3)).save(image)
    found, = tapefit.classify(str(py), [str(image)])
    printed = subprocess.run([sys.executable, "predict.py", f"--workdir={cli}", str(image)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert printed.stdout.strip() == f"{image}\t{found.label}\t{found.probability:.4f}"
    assert sum(found.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    model, class_names = tapefit.load_model(str(py))
    assert class_names == sorted(found.probabilities)


def test_a_study_from_python_is_the_commands_study(tmp_path):
    """The same study by `tapefit sweep` and `tapefit.study`: the same trials, the same
    results.csv; the object holds the report."""
    common = {k: v for k, v in FLAGS.items() if k != "unfreeze_from"}
    argv = [f"--{k}={v}" for k, v in common.items()]
    cli = subprocess.run([sys.executable, "sweep.py", f"--workdir={tmp_path / 'cli'}",
                          "--phases=head,evaluate", "--axis=dropout=0.1,0.3", "--seeds=0,1",
                          "--noprogress", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert cli.returncode == 0, cli.stderr
    study = tapefit.study(str(tmp_path / "py"), axes=["dropout=0.1,0.3"], seeds=[0, 1],
                          phases="head,evaluate", **common)
    assert sorted(study.outcomes.values()) == ["finished"] * 4
    assert sorted(os.listdir(tmp_path / "py" / "trials")) == sorted(
        os.listdir(tmp_path / "cli" / "trials"))
    # results.csv: every column but the wall times.
    tables = []
    for side in ("py", "cli"):
        with open(tmp_path / side / "results.csv", newline="") as f:
            tables.append([{k: v for k, v in row.items() if k != "wall_s"}
                           for row in csv.DictReader(f)])
    assert tables[0] == tables[1] and len(tables[0]) == 4
    assert study.markdown == (tmp_path / "py" / "results.md").read_text()
    assert len(study.rows) == 4 and study.line.startswith(f"sweep {tmp_path / 'py'} ")
    assert cli.stdout.strip().splitlines()[-1].split(": ", 1)[1].split("; report")[0] == (
        study.line.split(": ", 1)[1].split("; report")[0])
