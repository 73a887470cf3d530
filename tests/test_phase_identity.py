"""One identity per phase (issue 30): every phase folder records what it is (flags, data
content, seed, parent: flags/identity.py); a study keys its shared phases by it, never by
the data's path; one lock per phase whatever path reaches it; a trial's shared phases are
read-only through the trial; the runner and the report check what they find against
what the trial names. Stand-in phases for the lock and link cases (no TensorFlow runs)."""
import json
import os
import threading

import pytest

from tapefit.flags import identity as identity_lib
from tapefit.flags.config import Config
from tapefit.flags.errors import ConfigError, RunError
from tapefit.layout import paths
from tapefit.research import grid, runner, study, trial_files

TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": 32,
        "dataset": "synthetic", "synthetic_examples": 24, "batch_size": 8, "epochs": 1,
        "deterministic": True}


def fake_run(seen):
    """A stand-in for phases.run: a finished phase's files, its identity as a real run
    records it (the parent read from the head it would load)."""
    def run(cfg):
        seen.append((cfg.workdir, cfg.phase))
        folder = os.path.join(cfg.workdir, cfg.phase)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump({"stop_reason": "finished", "files": {"final": "x"}}, f)
        for name in ("final.weights.h5", "best.weights.h5"):
            open(os.path.join(folder, name), "w").close()
        parent = (identity_lib.recorded_digest(os.path.join(cfg.workdir, "head"))
                  if cfg.phase == "finetune" else None)
        from tapefit.input_pipeline import data_fingerprint
        with open(os.path.join(folder, paths.IDENTITY_JSON), "w") as f:
            json.dump(identity_lib.identity(cfg, data_fingerprint(cfg), parent), f)
        return {}
    return run


@pytest.fixture
def stand_in(monkeypatch):
    from tapefit.loops import phases
    seen = []
    monkeypatch.setattr(phases, "run", fake_run(seen))
    return seen


def _photos(folder, count, start=0):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(start)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            os.makedirs(os.path.join(folder, split, name), exist_ok=True)
            for i in range(start, start + count):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, split, name, f"{i}.png"))


# ---- one lock per phase ------------------------------------------------------------------

def test_a_phase_reached_through_a_link_has_the_lock_of_its_real_folder(tmp_path):
    """Break 1: a --noshare_phases shard resuming a trial whose finetune is a link, and the
    shard running the shared finetune, locked two different files and both wrote."""
    from tapefit.loops.rundir import run_dir as run_dir_lib
    from tapefit.loops.rundir.run_lock import RunLock
    real = tmp_path / "study" / "shared" / "finetune-s0-abc" / "finetune"
    real.mkdir(parents=True)
    trial = tmp_path / "study" / "trials" / "t"
    trial.mkdir(parents=True)
    os.symlink(os.path.relpath(real, trial), trial / "finetune")
    assert paths.lock_path(str(trial / "finetune")) == paths.lock_path(str(real))
    with RunLock(paths.lock_path(str(real)), what="run directory"):
        with pytest.raises(RunError, match="another|running|held|pid"):
            run_dir_lib.check_not_running(str(trial / "finetune"))


# ---- the shared key is the data's content ------------------------------------------------

def test_a_shared_phase_is_keyed_by_the_photos_not_their_folder(tmp_path):
    """Break 2: photos added to --data_dir between two runs of a study gave the new trial
    the head trained on the old photos (the key held the path)."""
    import shutil
    data = str(tmp_path / "photos")
    _photos(data, 3)
    flags = {**{k: v for k, v in TINY.items() if k not in ("dataset", "synthetic_examples")},
             "data_dir": data}
    folder = str(tmp_path / "study")
    s = study.make(folder, flags, phases="head,finetune",
                   axes=["finetune.learning_rate=1e-4"], seeds="0")
    (before,) = grid.expand(s, folder)
    copy = str(tmp_path / "copy")
    shutil.copytree(data, copy)
    s_copy = study.make(str(tmp_path / "other"), {**flags, "data_dir": copy},
                        phases="head,finetune", axes=["finetune.learning_rate=1e-4"], seeds="0")
    (copied,) = grid.expand(s_copy, str(tmp_path / "other"))
    assert copied.phase_key("head") == before.phase_key("head")  # The same photos elsewhere.
    _photos(data, 1, start=100)  # One more photo per class and split.
    (after,) = grid.expand(s, folder)
    assert after.trial_id == before.trial_id  # The same configuration...
    assert after.phase_key("head") != before.phase_key("head")  # ...on other data.
    assert after.phase_key("finetune") != before.phase_key("finetune")
    assert after.identity("head")["data"] != before.identity("head")["data"]
    assert after.identity("finetune")["parent"] == after.identity("head")["digest"]


# ---- readers check what they find --------------------------------------------------------

def test_a_trial_linked_to_another_seeds_phase_is_damaged_not_used(tmp_path, stand_in):
    """Break 5: a trial link pointing at another seed's shared folder was counted as the
    trial's result (seed 1's numbers as seed 0's)."""
    folder = str(tmp_path / "study")
    s = study.make(folder, TINY, phases="head,finetune",
                   axes=["finetune.learning_rate=1e-4"], seeds="0,1")
    outcomes = study.run(s, folder, progress=False)
    assert sorted(outcomes.values()) == ["finished"] * 2
    zero, one = grid.expand(s, folder)
    assert trial_files.identity_problems(zero.trial_dir, s.phases) == []
    link = os.path.join(zero.trial_dir, "head")
    os.remove(link)
    os.symlink(os.path.relpath(os.path.join(one.shared_dir("head"), "head"), zero.trial_dir),
               link)
    problems = trial_files.identity_problems(zero.trial_dir, s.phases)
    assert problems and "seed 1, not 0" in problems[0]
    from tapefit.research import report
    row = report.collect(zero)  # The report: damaged, never seed 1's numbers as seed 0's.
    assert row["status"] == report.DAMAGED and "seed 1, not 0" in row["reason"]
    with pytest.raises(RunError, match="seed 1, not 0"):
        runner._check_identity(zero.trial_dir, "head", zero.identity("head"))


def test_a_damaged_identity_is_named(tmp_path, stand_in):
    folder = str(tmp_path / "study")
    s = study.make(folder, TINY, phases="head", axes=["learning_rate=1e-3"], seeds="0")
    study.run(s, folder, progress=False)
    (trial,) = grid.expand(s, folder)
    path = os.path.join(trial.trial_dir, "head", paths.IDENTITY_JSON)
    record = json.load(open(path))
    record["seed"] = 5  # Edited without its digest.
    with open(path, "w") as f:
        json.dump(record, f)
    (problem,) = trial_files.identity_problems(trial.trial_dir, s.phases)
    assert "identity.json" in problem and "digest" in problem


def test_a_run_through_a_link_writes_only_the_same_phase(tmp_path):
    """Break 4 at the root: a run that reaches a study's shared phase through a trial's
    link may only be that phase (a resume); anything else is one line naming a folder of
    its own."""
    from tapefit.loops import phases
    real = tmp_path / "shared" / "evaluate-s0-x" / "evaluate"
    real.mkdir(parents=True)
    cfg = Config(phase="evaluate", dataset="synthetic", seed=0)
    mine = identity_lib.evaluation_identity(cfg, cfg, "a" * 64, "p" * 16)
    with open(real / paths.IDENTITY_JSON, "w") as f:
        json.dump(mine, f)
    trial = tmp_path / "trial"
    trial.mkdir()
    os.symlink(real, trial / "evaluate")
    phases.check_through_link(str(trial / "evaluate"), mine)  # The same run: allowed.
    other = identity_lib.evaluation_identity(cfg, cfg, "b" * 64, "p" * 16)
    with pytest.raises(ConfigError, match="read-only through it.*other data.*--workdir="):
        phases.check_through_link(str(trial / "evaluate"), other)
    phases.check_through_link(str(tmp_path / "shared" / "evaluate-s0-x" / "evaluate"), other)
    # An unfinished run that records nothing yet (evaluate records itself at its end, a
    # kill came first): nothing to protect, its resume through the link is allowed.
    os.remove(real / paths.IDENTITY_JSON)
    phases.check_through_link(str(trial / "evaluate"), other)
    (real / paths.EVALUATION_JSON).write_text("{}")  # Finished, recording nothing: refused.
    with pytest.raises(ConfigError, match="records no identity"):
        phases.check_through_link(str(trial / "evaluate"), other)


# ---- special files in place of a study's files --------------------------------------------

def _one_trial(tmp_path, phases_text="head"):
    folder = str(tmp_path / "study")
    s = study.make(folder, TINY, phases=phases_text, axes=["learning_rate=1e-3"], seeds="0")
    (trial,) = grid.expand(s, folder)
    return s, trial, {p: trial.shared_dir(p) for p in s.phases}


def test_a_fifo_as_a_shared_phase_lock_is_one_line_not_a_wait(tmp_path, stand_in):
    """Break 11: a FIFO as `.phase.lock` was read as "held by another process": the trial
    waited forever with nothing on stderr."""
    s, trial, shared = _one_trial(tmp_path)
    os.makedirs(shared["head"])
    os.mkfifo(os.path.join(shared["head"], runner.PHASE_LOCK_FILE))
    result = []
    thread = threading.Thread(target=lambda: result.append(
        runner.run_trial(trial.trial_dir, s.phases, trial.configs(), shared=shared)),
        daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert result == [runner.FAILED], "the trial waited on a FIFO"
    reason = runner.read_status(trial.trial_dir)["reason"]
    assert "FIFO" in reason and "not a lock file" in reason and "remove it" in reason
    assert stand_in == []


def test_a_folder_as_a_trial_lock_is_one_line_not_running_elsewhere(tmp_path, stand_in):
    s, trial, shared = _one_trial(tmp_path)
    os.makedirs(os.path.join(trial.trial_dir, runner.LOCK_FILE))
    with pytest.raises(RunError, match="not a lock file; remove it"):
        runner.run_trial(trial.trial_dir, s.phases, trial.configs(), shared=shared)


def test_a_file_in_place_of_a_shared_folder_is_one_line(tmp_path, stand_in):
    s, trial, shared = _one_trial(tmp_path)
    os.makedirs(os.path.dirname(shared["head"]))
    open(shared["head"], "w").close()
    assert runner.run_trial(trial.trial_dir, s.phases, trial.configs(),
                            shared=shared) == runner.FAILED
    reason = runner.read_status(trial.trial_dir)["reason"]
    assert reason.startswith(shared["head"]) and "not a folder" in reason
    assert "Traceback" not in open(os.path.join(trial.trial_dir, runner.TRIAL_LOG)).read()


def test_a_symlinked_trials_folder_keeps_its_links_resolvable(tmp_path, stand_in):
    """Break 9: with <study>/trials a link to scratch space, the relative ../../shared/...
    links dangled: every trial trained into shared/ and was then "failed"."""
    scratch = tmp_path / "scratch" / "deep" / "trials"
    scratch.mkdir(parents=True)
    folder = tmp_path / "study"
    folder.mkdir()
    os.symlink(scratch, folder / "trials")
    s, trial, shared = _one_trial(tmp_path, "head,finetune")
    assert runner.run_trial(trial.trial_dir, s.phases, trial.configs(), content=trial.to_dict(),
                            shared=shared) == runner.FINISHED
    for phase in s.phases:
        assert os.path.isfile(os.path.join(trial.trial_dir, phase, "final.weights.h5"))
    assert trial_files.identity_problems(trial.trial_dir, s.phases) == []


def test_photos_changed_under_a_study_are_one_line_before_anything_runs(tmp_path, stand_in):
    """Break 2, the study's side: photos added between two runs of one study would put two
    datasets in one report; the sweep refuses in one line and writes nothing."""
    data = str(tmp_path / "photos")
    _photos(data, 3)
    flags = {**{k: v for k, v in TINY.items() if k not in ("dataset", "synthetic_examples")},
             "data_dir": data}
    folder = str(tmp_path / "study")
    s = study.make(folder, flags, phases="head", axes=["learning_rate=1e-3"], seeds="0")
    assert list(study.run(s, folder, progress=False).values()) == ["finished"]
    _photos(data, 1, start=100)
    s = study.make(folder, flags, phases="head", axes=["learning_rate=1e-3,3e-3"], seeds="0")
    listing = sorted(os.listdir(folder))
    with pytest.raises(ConfigError, match="data of this study changed.*another --workdir"):
        study.run(s, folder, progress=False)
    assert sorted(os.listdir(folder)) == listing and len(stand_in) == 1


def test_a_shared_phase_run_through_a_link_elsewhere_is_waited_for(tmp_path, monkeypatch):
    """User trial of break 1: a --noshare_phases shard resumed the shared finetune through
    a trial's link (holding the real folder's run lock); the sharing shard then failed its
    trial ("in use by pid …"). It waits for it instead, and trains nothing."""
    from tapefit.loops import phases
    from tapefit.loops.rundir import run_dir as run_dir_lib
    from tapefit.loops.rundir.run_lock import RunLock
    seen = []
    stand_in = fake_run(seen)

    def run(cfg):  # As phases.run: the run directory's lock first.
        run_dir_lib.check_not_running(os.path.join(cfg.workdir, cfg.phase))
        return stand_in(cfg)

    monkeypatch.setattr(phases, "run", run)
    monkeypatch.setattr(runner, "WAIT_POLL_S", 0.1)
    s, trial, shared = _one_trial(tmp_path)
    os.makedirs(shared["head"])
    held = RunLock(paths.lock_path(os.path.join(shared["head"], "head")), what="run directory")
    held.acquire()  # The other process, through a link.

    def other():
        import time
        time.sleep(1.0)
        fake_run([])(trial.config("head").replace(workdir=shared["head"]))
        held.release()
    thread = threading.Thread(target=other)
    thread.start()
    try:
        outcome = runner.run_trial(trial.trial_dir, s.phases, trial.configs(),
                                   content=trial.to_dict(), shared=shared)
    finally:
        thread.join()
        held.release()
    assert outcome == runner.FINISHED and seen == []
