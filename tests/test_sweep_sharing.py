"""Phase sharing: trials whose phases up to one are identical (flags and seed) share that
phase's run; the trial folder links to it and stays a whole run directory (predict,
finetune's head weights, the report); a shared phase runs under its own lock, which a
second process waits for (or defers). One tiny real study (MobileNet 0.25, no weights,
32 px synthetic images, 1 epoch); the lock cases with stand-in phases."""
import json
import os
import threading
import time

import pytest

from tapefit.flags import identity as identity_lib
from tapefit.research import grid, runner, study, trial_files

TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": 32,
        "dataset": "synthetic", "synthetic_examples": 24, "batch_size": 8, "epochs": 1,
        "deterministic": True}


@pytest.fixture
def calls(monkeypatch):
    """Every phases.run call, as (work directory, phase)."""
    from tapefit.loops import phases
    real, seen = phases.run, []

    def run(cfg):
        seen.append((cfg.workdir, cfg.phase))
        return real(cfg)

    monkeypatch.setattr(phases, "run", run)
    return seen


def test_a_finetune_axis_trains_one_head_per_seed(tmp_path, calls):
    folder = str(tmp_path / "study")
    s = study.make(folder, TINY, phases="head,finetune,evaluate",
                   axes=["finetune.learning_rate=1e-4,3e-4"], seeds="0,1")
    outcomes = study.run(s, folder, progress=False)
    assert sorted(outcomes.values()) == ["finished"] * 4
    phases = [p for _, p in calls]
    assert phases.count("head") == 2 and phases.count("finetune") == 4
    assert phases.count("evaluate") == 4
    trials = grid.expand(s, folder)
    for t in trials:
        head = os.path.join(t.trial_dir, "head")
        assert os.path.islink(head) and os.path.isfile(os.path.join(head, "final.weights.h5"))
        assert os.path.realpath(head) == os.path.realpath(os.path.join(t.shared_dir("head"),
                                                                       "head"))
        # The trial folder is a whole run: the newest weights are its finetune's.
        from tapefit.loops.train_lib import load_trained_model
        _, cfg, classes, phase = load_trained_model(t.trial_dir)
        assert phase == "finetune" and cfg.learning_rate == t.config("finetune").learning_rate
        # Its finetune started from the shared head's weights.
        summary = runner.read_json_or_none(os.path.join(t.trial_dir, "finetune", "summary.json"))
        assert summary["phase"] == "finetune"
    by_seed = {}
    for t in trials:
        by_seed.setdefault(t.seed, set()).add(os.path.realpath(os.path.join(t.trial_dir,
                                                                            "head")))
    assert all(len(heads) == 1 for heads in by_seed.values()) and len(by_seed) == 2
    # What each phase run records is what its trial expects (issue 30: the sweep's key and
    # the run's own record are one identity), and the report finds nothing to object to.
    for t in trials:
        assert trial_files.identity_problems(t.trial_dir, s.phases) == []
        for p in s.phases:
            assert (identity_lib.recorded_digest(os.path.join(t.trial_dir, p))
                    == t.identity(p)["digest"]), (t.trial_id, p)
    # Evaluating a trial on other data through its link is refused: the study is unchanged.
    from tapefit.flags.errors import ConfigError
    from tapefit.loops import phases as phases_lib
    evaluation = os.path.join(trials[0].trial_dir, "evaluate", "evaluation.json")
    before = open(evaluation).read()
    with pytest.raises(ConfigError, match="read-only through it.*other data"):
        phases_lib.run(trials[0].config("evaluate").replace(max_examples_per_split=8))
    assert open(evaluation).read() == before
    # The report reads each trial's (shared) head metrics.
    with open(os.path.join(folder, "results.csv")) as f:
        text = f.read()
    assert text.count("finished") == 4
    # The log says the features were computed once, then loaded.
    logs = "".join(open(os.path.join(t.trial_dir, "trial.log")).read() for t in trials)
    assert "feature cache: computed the features" in logs
    assert "feature cache: loaded the features" in logs

    # Without sharing (a new study folder): one head per trial.
    calls.clear()
    other = str(tmp_path / "unshared")
    s2 = study.make(other, TINY, phases="head,finetune",
                    axes=["finetune.learning_rate=1e-4,3e-4"], seeds="0")
    study.run(s2, other, progress=False, share_phases=False)
    assert [p for _, p in calls].count("head") == 2
    assert not any(os.path.islink(os.path.join(t.trial_dir, "head"))
                   for t in grid.expand(s2, other))


def test_keys_share_only_identical_inputs(tmp_path):
    folder = str(tmp_path / "study")
    s = study.make(folder, TINY, phases="head,finetune,evaluate",
                   axes=["finetune.learning_rate=1e-4,3e-4", "evaluate.batch_size=4,8"],
                   seeds="0,1")
    trials = grid.expand(s, folder)
    keys = {p: {t.shared_dir(p) for t in trials} for p in s.phases}
    assert len(keys["head"]) == 2  # One per seed.
    assert len(keys["finetune"]) == 4  # Seeds × finetune rates (evaluate.* does not count).
    assert len(keys["evaluate"]) == 8
    # A plain learning_rate axis reaches the head: nothing shared.
    s = study.make(folder, TINY, phases="head,finetune", axes=["learning_rate=1e-3,3e-3"],
                   seeds="0")
    assert len({t.shared_dir("head") for t in grid.expand(s, folder)}) == 2
    # --recipe=tuned changes the head's flags (its rate, schedule...): its own head.
    s = study.make(folder, TINY, phases="head,finetune", axes=["recipe=classic,tuned"],
                   seeds="0")
    classic, tuned = grid.expand(s, folder)
    assert tuned.config("head").lr_schedule == "one_cycle"
    assert classic.config("head").lr_schedule == "constant"
    assert classic.shared_dir("head") != tuned.shared_dir("head")


def fake_run(seen, pause=0.0):
    def run(cfg):
        seen.append((cfg.workdir, cfg.phase))
        time.sleep(pause)
        folder = os.path.join(cfg.workdir, cfg.phase)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump({"stop_reason": "finished", "files": {"final": "x"}}, f)
        for name in ("final.weights.h5", "best.weights.h5"):
            open(os.path.join(folder, name), "w").close()
        return {}
    return run


def test_a_shared_phase_held_elsewhere_is_deferred_or_waited_for(tmp_path, monkeypatch):
    from tapefit.loops import phases
    from tapefit.loops.rundir.run_lock import RunLock
    seen = []
    monkeypatch.setattr(phases, "run", fake_run(seen))
    folder = str(tmp_path / "study")
    s = study.make(folder, TINY, phases="head,finetune",
                   axes=["finetune.learning_rate=1e-4,3e-4"], seeds="0")
    first, second = grid.expand(s, folder)
    shared = {p: first.shared_dir(p) for p in s.phases}
    os.makedirs(shared["head"])
    lock = RunLock(os.path.join(shared["head"], runner.PHASE_LOCK_FILE), what="shared phase")
    lock.acquire()  # Another process trains the shared head.
    try:
        assert runner.run_trial(first.trial_dir, s.phases, first.configs(),
                                shared=shared, wait=False) == runner.DEFERRED
        assert seen == []
        # Waiting: the holder finishes the head and lets go; this trial then uses it.
        def holder():
            time.sleep(1.0)
            fake_run([])(first.config("head").replace(workdir=shared["head"]))
            lock.release()
        thread = threading.Thread(target=holder)
        thread.start()
        outcome = runner.run_trial(first.trial_dir, s.phases, first.configs(), shared=shared)
        thread.join()
    finally:
        lock.release()
    assert outcome == runner.FINISHED
    assert seen == [(shared["finetune"], "finetune")]  # The head was not trained again.
    # The second configuration shares the head, trains only its finetune.
    shared2 = {p: second.shared_dir(p) for p in s.phases}
    assert shared2["head"] == shared["head"]
    assert runner.run_trial(second.trial_dir, s.phases, second.configs(),
                            shared=shared2) == runner.FINISHED
    assert seen[-1] == (shared2["finetune"], "finetune") and len(seen) == 2
    assert os.path.islink(os.path.join(shared2["finetune"], "head"))


def test_a_trial_run_without_sharing_keeps_its_own_phases(tmp_path, monkeypatch):
    """A trial whose head is a folder of its own (a study run with --noshare_phases, or
    before sharing existed) keeps its later phases in its own folder too."""
    from tapefit.loops import phases
    seen = []
    monkeypatch.setattr(phases, "run", fake_run(seen))
    folder = str(tmp_path / "study")
    s = study.make(folder, TINY, phases="head,finetune", axes=["learning_rate=1e-3"],
                   seeds="0")
    (trial,) = grid.expand(s, folder)
    configs = trial.configs()
    fake_run([])(configs["head"])  # A finished head of its own.
    shared = {p: trial.shared_dir(p) for p in s.phases}
    assert runner.run_trial(trial.trial_dir, s.phases, configs, shared=shared) == "finished"
    assert seen == [(trial.trial_dir, "finetune")]
    assert not os.path.islink(os.path.join(trial.trial_dir, "finetune"))


def test_a_flag_added_later_keeps_the_shared_keys_of_older_studies(tmp_path):
    """--max_examples_per_class came after studies were made: at its default (0) it stays
    out of the phase's identity (flags/identity.py), so the shared key is the one it was
    before the flag existed; set, it is a different head."""
    folder = str(tmp_path / "study")
    s = study.make(folder, TINY, phases="head", axes=["max_examples_per_class=0,5"], seeds="0")
    every, five = grid.expand(s, folder)
    assert (every.config("head").max_examples_per_class,
            five.config("head").max_examples_per_class) == (0, 5)
    assert "max_examples_per_class" not in every.identity("head")["flags"]
    assert five.identity("head")["flags"]["max_examples_per_class"] == 5
    without = {k: v for k, v in every.identity("head").items() if k != "digest"}
    assert every.shared_dir("head").endswith(identity_lib.digest(without)[:12])
    assert five.shared_dir("head") != every.shared_dir("head")
