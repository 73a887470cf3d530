"""sweep.py's inputs (issue 21 item 7, issue 22 item 5): sweep files of the wrong shape,
seeds that are not integers, overlapping axes, values that can only fail, a damaged
log of a finished phase, the wall time of a killed trial, the feature_cache axis, the
HParams experiment of a grown grid, --help. Each case is one line, before anything is
written. Fast: no model is trained (fake phases where a trial must run)."""
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from tapefit.flags.errors import ConfigError
from tapefit.research import grid, runner, study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": 32,
        "dataset": "synthetic", "synthetic_examples": 24, "batch_size": 8, "epochs": 1,
        "tensorboard": False}


def make(tmp_path, axes=(), seeds="0", phases="head", flags=None, sweep_file=None):
    return study.make(str(tmp_path / "study"), dict(TINY, **(flags or {})), phases=phases,
                      axes=list(axes), seeds=seeds, sweep_file=sweep_file)


def one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


# ---- the feature_cache axis (issue 22 item 5) ------------------------------------------

def test_feature_cache_is_an_axis_like_any_flag(tmp_path):
    s = make(tmp_path, ["feature_cache=off,memory"])
    assert [t.config("head").feature_cache for t in grid.expand(s, "s")] == ["off", "memory"]
    s = make(tmp_path, ["head.feature_cache=off,memory"], phases="head,finetune")
    first, second = grid.expand(s, "s")
    assert (first.config("head").feature_cache, second.config("head").feature_cache) == (
        "off", "memory")
    assert first.config("finetune").feature_cache == "disk"  # auto -> disk in a sweep


# ---- sweep files -----------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ('{"axes": [1, 2]}', "'axes' is a JSON list, not an object"),
    ('{"seeds": 5}', "'seeds' is a JSON number"),
    ('{"phases": 3}', "'phases' is a JSON number"),
    ('{"flags": ["epochs"]}', "'flags' is a JSON list"),
    ('{"baseline": 1}', "'baseline' is a JSON number"),
    ('[1, 2]', "holds a JSON list, not an object"),
    ('{"axes": {"learning_rate": [{"a": 1}]}}', "a value is a number, string"),
    ('{"axes": {"learning_rate": [[[1]]]}}', "a value is a number, string"),
    ('{"phases": [1, 2]}', "pass a list of phase names"),
    ('{"flags": {"epochs": [3]}}', "not a valid int"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
], ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_sweep_files_of_the_wrong_shape_are_one_line(tmp_path, content, message):
    path = tmp_path / "study.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as e:
        make(tmp_path, seeds=None, phases=None, sweep_file=str(path))
    assert message in one_line(e)


def test_a_sweep_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "study.json"
    path.write_bytes(b'{"seeds": [0], "flags": {"data_dir": "caf\xe9"}}')
    with pytest.raises(ConfigError) as e:
        make(tmp_path, seeds=None, phases=None, sweep_file=str(path))
    assert "is not UTF-8 text" in one_line(e)


def call_with_deadline(fn, seconds=20):
    """fn() in a thread; (finished, exception). A call that blocks (reading a FIFO) or
    reads without end fails the test instead of hanging it."""
    box = {}

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("error")


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder", "huge"])
def test_sweep_file_must_be_a_small_regular_file(tmp_path, kind):
    path = tmp_path / "study.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path = "/dev/zero"
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_text('{"seeds": [0], "flags": {"data_dir": "' + "x" * (2 << 20) + '"}}')
    finished, error = call_with_deadline(
        lambda: make(tmp_path, seeds=None, phases=None, sweep_file=str(path)))
    assert finished, f"reading {kind} as --sweep_file did not return"
    assert isinstance(error, ConfigError), error
    assert "\n" not in str(error)
    assert ("not a regular file" in str(error)) if kind != "huge" else "bytes" in str(error)


# ---- seeds -----------------------------------------------------------------------------

@pytest.mark.parametrize("seeds", [[1.5, 2], [True, 1], ["1", 2], 5, "0,1.5", "0,x", {"a": 1}])
def test_seeds_are_integers_never_coerced(tmp_path, seeds):
    with pytest.raises(ConfigError) as e:
        make(tmp_path, seeds=seeds)
    assert "is not a non-negative integer" in one_line(e)


def test_a_damaged_sweep_json_is_one_line_for_report_only(tmp_path):
    """sweep.json (what --report_only and every shard's worker read) with seeds `5`."""
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps(
        {"phases": ["head"], "axes": {"learning_rate": [1e-3]}, "seeds": 5, "flags": TINY}))
    proc = subprocess.run([sys.executable, "sweep.py", f"--workdir={folder}", "--report_only"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --sweep_file=")
    assert "'seeds' is a JSON number" in proc.stderr


# ---- overlapping axes ------------------------------------------------------------------

@pytest.mark.parametrize("axes", [["learning_rate=1e-3,3e-3", "head.learning_rate=1e-2"],
                                  ["head.learning_rate=1e-2", "learning_rate=1e-3,3e-3"],
                                  ["learning_rate/head.learning_rate=1e-3/1e-2"]])
def test_overlapping_axes_are_refused(tmp_path, axes):
    with pytest.raises(ConfigError) as e:
        make(tmp_path, axes, phases="head,finetune")
    assert "both set the head phase's --learning_rate" in one_line(e)


def test_phase_axes_of_different_phases_do_not_overlap(tmp_path):
    s = make(tmp_path, ["head.learning_rate=1e-2", "finetune.learning_rate=1e-3,1e-4"],
             phases="head,finetune")
    assert len(grid.expand(s, "s")) == 2


# ---- values that can only fail: refused before anything runs ---------------------------

@pytest.mark.parametrize("axes, flags, phases, message", [
    (["epochs=0,1"], {}, "head", "--epochs=0 trains nothing in the head phase"),
    (["finetune.epochs=0"], {}, "head,finetune", "--epochs=0 trains nothing in the finetune"),
    (["image_size=16,32"], {}, "head", "--image_size=16 is too small for mobilenet"),
    ([], {"learning_rate": "auto"}, "head", "--learning_rate=auto needs a learning-rate finder"),
    (["learning_rate=1e-3"], {}, "finetune", "the finetune phase needs head weights"),
    (["learning_rate=1e-3"], {}, "evaluate", "evaluate needs trained weights"),
])
def test_values_that_can_only_fail_are_refused_up_front(tmp_path, monkeypatch, axes, flags,
                                                        phases, message):
    from tapefit.loops import phases as phase_layer
    ran = []
    monkeypatch.setattr(phase_layer, "run", lambda cfg: ran.append(cfg) or {})
    folder = str(tmp_path / "study")
    s = study.make(folder, dict(TINY, **flags), phases=phases, axes=axes, seeds="0")
    with pytest.raises(ConfigError) as e:
        study.run(s, folder, progress=False)
    assert message in one_line(e)
    assert ran == [] and not os.path.exists(folder)


# ---- trial state from the phase's own record -------------------------------------------

def fake_phase(cfg, log_text, final=True):
    """What a finished phase leaves: log.csv, summary.json, final/best weights."""
    folder = os.path.join(cfg.workdir, cfg.phase)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "log.csv"), "w") as f:
        f.write(log_text)
    summary = {"phase": cfg.phase, "stop_reason": "finished" if final else "nan",
               "stopped_epoch": None if final else 1, "epochs_run": 1,
               "files": {"final": os.path.join(folder, "final.weights.h5") if final else None}}
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f)
    if final:
        for name in ("final.weights.h5", "best.weights.h5"):
            open(os.path.join(folder, name), "w").close()
    return summary


def test_a_finished_phase_with_a_truncated_log_is_finished_not_diverged(tmp_path, monkeypatch):
    from tapefit.loops import phases
    monkeypatch.setattr(phases, "run", lambda cfg: fake_phase(
        cfg, "epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n0,0.5,0.69,0.001,0.5,0.6"
             "\n1,0.5,0.6"))  # The last row cut mid-write.
    s = make(tmp_path, ["learning_rate=1e-3"])
    (trial,) = grid.expand(s, str(tmp_path / "study"))
    outcomes = study.run(s, str(tmp_path / "study"), progress=False)
    assert outcomes == {trial.trial_id: "finished"}
    assert runner.read_status(trial.trial_dir)["status"] == "finished"


def test_a_phase_that_stopped_on_nan_is_diverged(tmp_path, monkeypatch):
    from tapefit.loops import phases
    monkeypatch.setattr(phases, "run", lambda cfg: fake_phase(
        cfg, "epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n0,0.5,nan,1,0.5,nan\n",
        final=False))
    s = make(tmp_path, ["learning_rate=1e-3"])
    (trial,) = grid.expand(s, str(tmp_path / "study"))
    assert study.run(s, str(tmp_path / "study"), progress=False) == {trial.trial_id: "failed"}
    assert runner.read_status(trial.trial_dir)["reason"].startswith("diverged: ")


# ---- wall time of a killed trial -------------------------------------------------------

KILLED_CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from tapefit.loops import phases, train_lib
    from tapefit.research import runner
    from tapefit.flags.config import Config
    def run(cfg):
        time.sleep(3.5)
        os._exit(9)  # Killed: no finally, no status written on the way out.
    phases.run = run
    cfg = Config(**{cfg!r})
    runner.run_trial({folder!r}, ["head"], {{"head": cfg}})
""")


def test_a_resumed_trial_keeps_the_wall_time_before_the_kill(tmp_path, monkeypatch):
    s = make(tmp_path, ["learning_rate=1e-3"])
    (trial,) = grid.expand(s, str(tmp_path / "study"))
    cfg = trial.config("head")
    child = KILLED_CHILD.format(root=ROOT, cfg=cfg.to_dict(), folder=trial.trial_dir)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    from tapefit.loops import phases
    monkeypatch.setattr(phases, "run", lambda c: fake_phase(
        c, "epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n0,0.5,0.6,0.001,0.5,0.6\n"))
    assert runner.run_trial(trial.trial_dir, ["head"], {"head": cfg}) == "finished"
    wall = runner.read_status(trial.trial_dir)["wall_s"]["head"]
    # The killed run lived 3.5 s in its phase; its last heartbeat (every HEARTBEAT_S) counts.
    assert wall >= 3.5 - runner.HEARTBEAT_S - 0.5, wall


# ---- HParams: the experiment follows the grid ------------------------------------------

def test_hparams_experiment_is_rewritten_when_the_grid_grows(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from tapefit.research import hparams
    folder = str(tmp_path / "study")
    hparams.write_experiment(make(tmp_path, ["learning_rate=1e-3,3e-3"]), folder)
    hparams.write_experiment(make(tmp_path, ["learning_rate=1e-3,3e-3,1e-2"]), folder)
    acc = event_accumulator.EventAccumulator(os.path.join(folder, "hparams"))
    acc.Reload()
    raw = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(raw).experiment
    (info,) = experiment.hparam_infos
    assert sorted(v.number_value for v in info.domain_discrete.values) == pytest.approx(
        [1e-3, 3e-3, 1e-2])


# ---- --help ----------------------------------------------------------------------------

def test_help_points_to_files_that_exist():
    proc = subprocess.run([sys.executable, "sweep.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert "README_SECTION" not in proc.stdout
    assert "README.md" in proc.stdout and "--race" in proc.stdout


# ---- the dogfood study ----------------------------------------------------------------------

def test_the_recipes_study_compares_classic_with_the_tuned_recipe(tmp_path):
    """studies/recipes.json: the README's quality setup, the paths on the command line."""
    from tapefit.flags.config import RECIPES
    s = study.make(str(tmp_path / "study"), {"data_dir": "/data", "weights": "w.h5"},
                   sweep_file=os.path.join(ROOT, "studies", "recipes.json"))
    trials = grid.expand(s, "s")
    assert len(trials) == 2 * 5 and s.phases == ("head", "finetune", "evaluate")
    classic, tuned = trials[:2]
    assert (classic.config("head").image_size, classic.config("finetune").epochs) == (160, 3)
    for phase in ("head", "finetune"):
        for name, value in RECIPES["tuned"][phase].items():
            assert getattr(tuned.config(phase), name) == value, (phase, name)
    assert classic.config("head").lr_schedule == "constant"
    assert classic.config("finetune").learning_rate is None  # A tenth of the head's.
