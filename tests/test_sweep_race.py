"""sweep.py --race: seeds in rounds, configurations significantly worse than the round's
best on the validation metric dropped (paired, Holm-adjusted), resumable and shardable,
recomputed from disk. The phases are stand-ins (no model is trained): each writes what a
finished phase leaves, with a validation accuracy set by its learning rate and seed."""
import json
import os

import pytest

from tapefit.flags.errors import ConfigError
from tapefit.research import grid, race, runner, study

TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": 32,
        "dataset": "synthetic", "synthetic_examples": 24, "batch_size": 8, "epochs": 2,
        "tensorboard": False}
BASE = {1e-2: 0.90, 1e-3: 0.905, 1e-6: 0.50}  # Validation accuracy by learning rate.


def accuracy(cfg, failing=()):
    index = sorted(BASE).index(cfg.learning_rate)
    return BASE[cfg.learning_rate] + ((cfg.seed * 7 + index * 3) % 5) * 0.004


@pytest.fixture
def phases(monkeypatch):
    """Stand-in phases.run; the list of (phase, learning rate, seed) it ran."""
    from tapefit.loops import phases
    ran, failing = [], set()

    def run(cfg):
        ran.append((cfg.phase, cfg.learning_rate, cfg.seed))
        folder = os.path.join(cfg.workdir, cfg.phase)
        os.makedirs(folder, exist_ok=True)
        if (cfg.learning_rate, cfg.seed) in failing:
            from tapefit.flags.errors import RunError
            raise RunError("the data went away")
        if cfg.phase == "evaluate":
            with open(os.path.join(folder, "evaluation.json"), "w") as f:
                json.dump({"accuracy": 0.5, "loss": 0.7, "test_examples": 10}, f)
            return {}
        acc = accuracy(cfg)
        with open(os.path.join(folder, "log.csv"), "w") as f:
            f.write("epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n")
            for epoch in range(cfg.epochs):
                f.write(f"{epoch},0.5,0.7,{cfg.learning_rate},{acc},{1 - acc}\n")
        summary = {"phase": cfg.phase, "stop_reason": "finished", "epochs_run": cfg.epochs,
                   "epochs": cfg.epochs, "monitor": "val_loss", "best_value": 1 - acc,
                   "best_epoch": cfg.epochs,
                   "files": {"final": os.path.join(folder, "final.weights.h5")}}
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump(summary, f)
        for name in ("final.weights.h5", "best.weights.h5"):
            open(os.path.join(folder, name), "w").close()
        return summary

    monkeypatch.setattr(phases, "run", run)
    run.ran, run.failing = ran, failing
    return run


def make_race(folder, seeds=None, min_seeds=3, max_seeds=5, alpha=0.05,
              phases="head,evaluate"):
    return study.make(folder, TINY, phases=phases, axes=["learning_rate=1e-2,1e-3,1e-6"],
                      seeds=seeds, race=grid.Race(min_seeds, max_seeds, alpha))


def test_the_clearly_worse_configuration_is_dropped_when_the_seeds_can_tell(tmp_path, phases):
    """The race's whole-run α (issue 31): three configurations on up to 8 seeds can drop
    one only at seed 8 (race_levels: the only round where an exact sign-flip test over the
    seeds reaches α spent over the 3 pairs); the clearly worse one goes there."""
    folder = str(tmp_path / "study")
    s = make_race(folder, max_seeds=8)
    assert s.seeds == tuple(range(8))  # No --seeds: 0..max_seeds-1.
    study.run(s, folder, progress=False)
    head_runs = [(lr, seed) for phase, lr, seed in phases.ran if phase == "head"]
    assert sorted(head_runs) == sorted((lr, s_) for lr in BASE for s_ in range(8))
    content = json.load(open(os.path.join(folder, race.RACE_JSON)))
    assert content["finished"] and content["winner"] is None and content["round"] == 6
    assert content["alive"] == ["learning_rate=0.01", "learning_rate=1e-3"]
    (dropped,) = content["dropped"]
    assert dropped["configuration"] == "learning_rate=1e-6" and dropped["round"] == 6
    assert dropped["p"] <= dropped["level"] and dropped["difference"] < -0.3
    assert [r["level"] for r in content["rounds"]][:5] == [0] * 5  # No look could claim.
    assert [r["seeds"] for r in content["rounds"]] == [list(range(n)) for n in range(3, 9)]
    text = race.section(folder)
    assert "learning_rate=1e-6" in text and "sign-flip" in text
    assert text in open(os.path.join(folder, "results.md")).read()  # The report shows it.

    # Resumed: recomputed from disk, nothing runs again, the same state.
    phases.ran.clear()
    study.run(s, folder, progress=False)
    assert phases.ran == []
    assert json.load(open(os.path.join(folder, race.RACE_JSON))) == content


def test_the_race_ends_when_one_is_left(tmp_path, phases):
    folder = str(tmp_path / "study")
    s = study.make(folder, TINY, phases="head", axes=["learning_rate=1e-3,1e-6"], seeds=None,
                   race=grid.Race(3, 8, 0.05))
    study.run(s, folder, progress=False)
    content = json.load(open(os.path.join(folder, race.RACE_JSON)))
    # Two configurations: the first look that can claim is at seed 7 (round 5).
    assert content["winner"] == "learning_rate=1e-3" and content["round"] == 5
    assert len(phases.ran) == 14 and content["trial_epochs"]["ratio"] == pytest.approx(14 / 16)


def test_a_shard_alone_finishes_the_race_and_any_process_gets_the_same_state(tmp_path,
                                                                            phases):
    folder = str(tmp_path / "study")
    s = make_race(folder, seeds="10,11,12,13,14,15", max_seeds=4)
    assert s.seeds == (10, 11, 12, 13)  # The first max_seeds of --seeds.
    study.run(s, folder, shard=(1, 2), progress=False)  # Shard 0 never came.
    first = race.compute(s, folder)
    assert first.finished and not first.pending
    again = race.compute(study.load(folder), folder)
    assert [(t.trial_id) for t in again.scheduled] == [t.trial_id for t in first.scheduled]
    assert again.dropped == first.dropped and again.alive == first.alive


def test_a_configuration_whose_trial_fails_leaves_the_race(tmp_path, phases):
    phases.failing.add((1e-2, 1))
    folder = str(tmp_path / "study")
    s = make_race(folder, max_seeds=3)
    study.run(s, folder, progress=False)
    content = json.load(open(os.path.join(folder, race.RACE_JSON)))
    reasons = {d["configuration"]: d["reason"] for d in content["dropped"]}
    assert "the data went away" in reasons["learning_rate=0.01"]
    assert content["winner"] is None  # 3 seeds: no level > 0 for 3 configurations (issue 31)


def test_a_partial_round_is_pending_not_judged(tmp_path, phases):
    folder = str(tmp_path / "study")
    s = make_race(folder)
    trials = grid.expand(s, folder)
    for t in trials[:4]:  # Seed 0 of all three, seed 1 of the first only.
        runner.run_trial(t.trial_dir, s.phases, t.configs(), t.to_dict())
    state = race.compute(s, folder)
    assert not state.finished and state.round == 1 and state.rounds == []
    assert {t.trial_id for t in state.pending} == {t.trial_id for t in trials[4:9]}


@pytest.mark.parametrize("kwargs, message", [
    ({"min_seeds": 1}, "--min_seeds=1 must be an integer of at least 2"),
    ({"max_seeds": 2}, "--max_seeds=2 must be an integer of at least --min_seeds=3"),
    ({"seeds": "0,1,2", "max_seeds": 5}, "--max_seeds=5 but the study lists 3 seeds"),
    ({"alpha": 1.5}, "--race_alpha=1.5 must be in (0, 1)"),
])
def test_bad_races_are_one_line(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_race(str(tmp_path / "study"), **kwargs)


def test_a_race_in_a_sweep_file_round_trips_through_sweep_json(tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"phases": ["head"], "axes": {"learning_rate": [1e-3, 1e-2]},
                                "race": {"min_seeds": 2, "max_seeds": 4}, "flags": TINY}))
    s = study.make(str(tmp_path / "study"), {}, sweep_file=str(path))
    assert s.race == grid.Race(2, 4, 0.05) and s.seeds == (0, 1, 2, 3)
    study.save(s, str(tmp_path / "study"))
    assert study.load(str(tmp_path / "study")).race == s.race


# ---- a decided round is history (issue 30 break 10) ------------------------------------

def test_a_configuration_added_to_a_finished_race_joins_a_new_round(tmp_path, phases,
                                                                   monkeypatch):
    folder = str(tmp_path / "study")
    study.run(make_race(folder, max_seeds=8), folder, progress=False)
    before = json.load(open(os.path.join(folder, race.RACE_JSON)))
    assert [d["round"] for d in before["dropped"]] == [6] and before["round"] == 6
    monkeypatch.setitem(BASE, 3e-2, 0.95)  # Clearly the best: decided again, round 1
    phases.ran.clear()                     # would drop the others and keep 1e-6's.
    grown = study.make(folder, TINY, phases="head,evaluate",
                       axes=["learning_rate=1e-2,1e-3,1e-6,3e-2"],
                       race=grid.Race(3, 8, 0.05))
    study.run(grown, folder, progress=False)
    after = json.load(open(os.path.join(folder, race.RACE_JSON)))
    assert after["rounds"][:6] == before["rounds"]  # History, as it was.
    joined = after["rounds"][6]
    assert joined["joined"] == ["learning_rate=0.03"] and joined["seeds"] == list(range(8))
    drops = {d["configuration"]: d["round"] for d in after["dropped"]}
    assert drops["learning_rate=1e-6"] == 6 and "learning_rate=0.03" not in drops
    assert {lr for phase, lr, _ in phases.ran if phase == "head"} == {3e-2}  # Only it ran.
    # The α the recorded rounds spent and the joining round's stay within --race_alpha.
    assert sum(r.get("alpha_spent", 0) for r in after["rounds"]) <= 0.05 + 1e-12
    # Recomputed again (any process, --report_only): the same.
    assert race.to_dict(grown, race.compute(grown, folder)) == after


def test_seeds_that_no_longer_start_with_a_decided_round_are_refused(tmp_path, phases):
    folder = str(tmp_path / "study")
    study.run(make_race(folder, max_seeds=3), folder, progress=False)
    other = make_race(folder, seeds="0,1,5,6", max_seeds=4)
    with pytest.raises(ConfigError, match=r"round 1 ran seeds 0,1,2.*a decided round is "
                                          "history") as e:
        study.run(other, folder, progress=False)
    assert "\n" not in str(e.value)


# ---- race.json that is not a file, race values of the wrong JSON type (break 11) -------

@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_fifo_in_place_of_race_json_is_one_line(tmp_path, phases, kind):
    folder = str(tmp_path / "study")
    os.makedirs(folder)
    path = os.path.join(folder, race.RACE_JSON)
    os.mkdir(path) if kind == "folder" else os.mkfifo(path)
    with pytest.raises(ConfigError) as e:
        study.run(make_race(folder, max_seeds=3), folder, progress=False)
    assert str(e.value).startswith(f"{path} is not a regular file") and "move it away" in \
        str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("value, message", [
    ({"min_seeds": "3"}, '"race": {"min_seeds": "3"}: "min_seeds" must be an integer, got "3"'),
    ({"alpha": True}, '"alpha" must be a number, got true'),
    ({"max_seeds": 4.0}, '"max_seeds" must be an integer or null, got 4.0'),
])
def test_race_values_of_the_wrong_json_type_quote_the_value_and_name_the_key(
        tmp_path, value, message):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"phases": ["head"], "axes": {"learning_rate": [1e-3, 1e-2]},
                                "race": value, "flags": TINY}))
    with pytest.raises(ConfigError) as e:
        study.make(str(tmp_path / "study"), {}, sweep_file=str(path))
    assert message in str(e.value) and "--min_seeds" not in str(e.value)
