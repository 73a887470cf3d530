"""The race's whole-run error control (issue 31) through its own path: race.compute with
stand-in trials (their state FINISHED, their metrics from a table), race.drops deciding
each round. No training: nothing but the race's arithmetic."""
import json
import os

import numpy as np
import pytest

from tapefit.research import grid, race, report, stats, study, trial_files

TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": 32,
        "dataset": "synthetic", "synthetic_examples": 24, "batch_size": 8, "epochs": 2,
        "tensorboard": False}


def make(folder, rates=("1e-3", "1e-2"), max_seeds=8, alpha=0.05):
    return study.make(folder, TINY, phases="head", axes=[f"learning_rate={','.join(rates)}"],
                      seeds=None, race=grid.Race(3, max_seeds, alpha))


@pytest.fixture
def finished(monkeypatch):
    """Every trial is finished (no files needed): the metrics decide."""
    monkeypatch.setattr(trial_files, "state", lambda folder, phases: trial_files.FINISHED)


def table_metrics(s, folder, table, damaged=()):
    """metrics(trial_dir, phases) from table[config, seed]; `damaged` {(c, s): why}."""
    by_dir = {t.trial_dir: (t.config_index, t.seed) for t in grid.expand(s, folder)}

    def metrics(trial_dir, phases):
        key = by_dir[trial_dir]
        if key in damaged:
            return {"status": report.DAMAGED, "reason": damaged[key],
                    "val_accuracy": float("nan")}
        return {"status": trial_files.FINISHED, "val_accuracy": float(table[key])}
    return metrics


def test_whole_run_false_drop_rate_under_a_null_is_at_most_alpha():
    """Two and three equal configurations, seeds 3..8, every round decided by the race's
    own decision function (race.drops, which race.compute calls: the tests below go
    through compute): any drop in a run is false. Discrete accuracy on 200 photos (ties
    and one-photo differences common)."""
    alpha, reps, max_seeds = 0.05, 600, 8
    rng = np.random.default_rng(31)
    for k in (2, 3):
        false = 0
        for _ in range(reps):
            seed_effect = rng.normal(0, 0.02, size=max_seeds)
            val = np.round(200 * (0.8 + seed_effect[None, :]
                                  + rng.normal(0, 0.01, size=(k, max_seeds)))) / 200
            alive = list(range(k))
            for count in range(3, max_seeds + 1):
                _, decided = race.drops({c: {sd: val[c, sd] for sd in range(count)}
                                         for c in alive}, k, 3, max_seeds, alpha, True)
                alive = [c for c in alive if c not in decided]
                if decided:
                    false += 1
                    break
        rate = false / reps
        assert rate <= alpha + 3 * stats.mc_se(alpha, reps), (k, rate)


def test_a_real_effect_is_dropped_by_the_last_seed_and_the_winner_declared(tmp_path,
                                                                        finished):
    folder = str(tmp_path / "study")
    s = make(folder)
    rng = np.random.default_rng(1)
    wins = 0
    for _ in range(40):
        table = {(c, sd): 0.8 + 0.05 * c + rng.normal(0, 0.01) for c in range(2)
                 for sd in range(8)}
        state = race.compute(s, folder, metrics=table_metrics(s, folder, table))
        content = race.to_dict(s, state)
        wins += content["winner"] == "learning_rate=0.01"
        assert not state.dropped or list(state.dropped) == [0]
    assert wins == 40  # Power 1 on this effect: dropped at seed 7 (the first level > 0).
    (d,) = content["dropped"]
    assert d["seeds"] == 7 and d["p"] == pytest.approx(2 / 2 ** 7)
    assert d["level"] == pytest.approx(stats.race_levels(2, 3, 8, 0.05)[7])
    assert d["p"] <= d["level"] and d["p_adjusted"] <= 0.05 and "sign-flip" in d["reason"]
    assert [r["level"] for r in content["rounds"]] == [
        stats.race_levels(2, 3, 8, 0.05)[n] for n in range(3, 8)]
    assert content["levels"]["8"] == pytest.approx(1 / 32)


def test_the_degenerate_triple_drops_nothing_and_declares_no_winner(tmp_path, finished):
    """Equal one-photo differences over 3 seeds (t infinite, p 0 under the old rule)."""
    folder = str(tmp_path / "study")
    s = make(folder, max_seeds=3)
    table = {(c, sd): 0.8 + sd / 150 - c / 150 for c in range(2) for sd in range(3)}
    state = race.compute(s, folder, metrics=table_metrics(s, folder, table))
    content = race.to_dict(s, state)
    assert state.finished and content["dropped"] == [] and content["winner"] is None
    look, decided = race.drops({c: {sd: table[c, sd] for sd in range(3)} for c in range(2)},
                               2, 3, 8, 0.05)
    assert decided == {} and look.claims[1].p == pytest.approx(0.25)


def test_a_damaged_trial_drops_its_configuration_with_the_reason(tmp_path, finished):
    folder = str(tmp_path / "study")
    s = make(folder, max_seeds=4)
    table = {(c, sd): 0.8 for c in range(2) for sd in range(4)}
    metrics = table_metrics(s, folder, table, damaged={(1, 2): "head/log.csv: not a CSV"})
    state = race.compute(s, folder, metrics=metrics)
    (d,) = state.dropped.values()
    assert list(state.dropped) == [1] and d["damaged"] and d["round"] == 1
    assert d["reason"].startswith("trial ") and " damaged: head/log.csv: not a CSV" in \
        d["reason"]
    race.write(s, folder, state)
    # Replayed as history; --retry_failed decides again once the trial is repaired.
    assert race.compute(s, folder, metrics=metrics).dropped == state.dropped
    again = race.compute(s, folder, metrics=table_metrics(s, folder, table),
                         retry_failed=True)
    assert again.dropped == {} and again.alive == [0, 1]


def test_rounds_of_the_old_per_look_rule_are_replayed_and_new_rounds_use_the_new(
        tmp_path, finished):
    folder = str(tmp_path / "study")
    s = make(folder, rates=("1e-3", "1e-2", "1e-1"), max_seeds=5)
    table = {(c, sd): 0.8 for c in range(3) for sd in range(5)}
    metrics = table_metrics(s, folder, table)
    content = race.to_dict(s, race.compute(s, folder, metrics=metrics))
    old = dict(content["rounds"][0])
    for key in ("plan", "level", "alpha_spent"):
        old.pop(key)
    old["dropped"] = ["learning_rate=0.1"]
    (gone_id,) = [i for i in old["ids"] if i not in content["rounds"][0]["ids"][:2]]
    content.update(rounds=[old], finished=False, dropped=[
        {"configuration": "learning_rate=0.1", "id": gone_id, "round": 1, "seeds": 3,
         "p_value": 0.01, "p_holm": 0.02, "reason": "worse …, Holm-adjusted 0.02 < 0.05"}])
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, race.RACE_JSON), "w") as f:
        json.dump(content, f)
    state = race.compute(s, folder, metrics=metrics)
    assert state.rounds[0] == old and state.dropped[2]["p_holm"] == 0.02  # As recorded.
    assert state.alive == [0, 1] and [r["seeds"][-1] for r in state.rounds] == [2, 3, 4]
    plans = [r["plan"] for r in state.rounds[1:]]
    assert plans[0] == plans[1] == {"k": 3, "from_seeds": 4, "max_seeds": 5, "alpha": 0.05}


def test_a_configuration_joining_gets_what_alpha_is_left(tmp_path, finished):
    """A grown grid: k counts those that started and those that joined; the rest of the
    race is planned with α less what the decided rounds spent (<= α over the run)."""
    folder = str(tmp_path / "study")
    s = make(folder, max_seeds=8)
    table = {(c, sd): 0.8 + 0.05 * c for c in range(3) for sd in range(8)}
    state = race.compute(s, folder, metrics=table_metrics(s, folder, table))
    race.write(s, folder, state)
    spent = sum(r["alpha_spent"] for r in state.rounds)
    assert spent <= 0.05 and list(state.dropped) == [0]
    grown = make(folder, rates=("1e-3", "1e-2", "1e-1"), max_seeds=8)
    after = race.compute(grown, folder, metrics=table_metrics(grown, folder, table))
    joined = after.rounds[-1]
    assert joined["joined"] == ["learning_rate=0.1"] and joined["seeds"] == list(range(8))
    assert joined["plan"] == {"k": 3, "from_seeds": 8, "max_seeds": 8,
                              "alpha": pytest.approx(0.05 - spent)}
    assert sum(stats.race_pairs(r["plan"]["k"]) * r["level"] for r in after.rounds) <= 0.05
