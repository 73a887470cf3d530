"""Racing (`sweep.py --race`): seeds are added in rounds, and a configuration that is
significantly worse than the current best is dropped after each round.

Round 1 runs every configuration on the first `min_seeds` seeds of the study; each
later round adds the next seed for the configurations still in the race. When a
round's trials are all done (finished or failed):
- a configuration with a failed trial in the round leaves the race (a trial that
  cannot finish cannot be compared);
- the best configuration is the one with the best mean of the selection metric
  (validation, `--select_by`; never the test set) over the round's seeds (ties:
  the first in grid order);
- every other configuration is compared with it, paired over the seeds both have
  (`stats.paired`), the p-values Holm-adjusted over these comparisons
  (`stats.holm`); those `stats.verdict` calls worse at `alpha` are dropped.
The race ends when one configuration is left or the last seed has run.

Everything is recomputed from what is on disk, in a fixed order: any process, any
shard, a resumed sweep or `--report_only` gets the same rounds. A round's trials are
ordinary trials (their ids do not depend on the race). `race.json` in the study
records the state; `research.report.race_section()` renders it for results.md.
"""
from __future__ import annotations

import dataclasses
import math
import os

from tapefit.layout import paths
from tapefit.layout.atomic import atomic_write_json, read_json_or_none
from tapefit.research import grid, report, stats, trial_files

RACE_JSON = paths.RACE_JSON


@dataclasses.dataclass
class RaceState:
    finished: bool  # The race is over (one left, or the last seed ran).
    round: int  # 1-based number of the current (or last) round.
    seeds: tuple  # The seeds of the current round.
    alive: list  # Config indices still in the race.
    scheduled: list  # Every trial the race has asked for so far (grid.Trial).
    pending: list  # Trials of the current round that are not done yet.
    rounds: list  # One dict per completed round.
    dropped: dict  # config index -> {"round", "seeds", "reason", ...}
    metric: str
    higher_is_better: bool


def trial_epochs(study: grid.Study, trial: grid.Trial) -> int:
    """The epochs a trial trains (its configured epochs of the head and finetune phases)."""
    return sum(trial.config(p).epochs for p in study.phases if p in ("head", "finetune"))


def compute(study: grid.Study, study_dir: str, metric: str = "val_accuracy",
            higher_is_better: bool = True, metrics=None) -> RaceState:
    """The race as far as the trials on disk take it (see the module docstring).

    `metrics(trial_dir, phases) -> {metric: value}` reads a trial's metrics
    (default: research.report.trial_metrics)."""
    if metrics is None:
        metrics = report.trial_metrics
    race = study.race
    labels = [_label(a, study) for a in grid.configurations(study)]
    trials = {(t.config_index, t.seed): t for t in grid.expand(study, study_dir)}
    seeds = study.seeds
    alive = list(range(len(labels)))
    scheduled, rounds, dropped = [], [], {}
    count = min(race.min_seeds, len(seeds))
    number = 1
    while True:
        current = tuple(seeds[:count])
        needed = [trials[(c, s)] for s in current for c in alive]
        scheduled += [t for t in needed if t not in scheduled]
        states = {t: trial_files.state(t.trial_dir, study.phases) for t in needed}
        pending = [t for t in needed if states[t] not in (trial_files.FINISHED, trial_files.FAILED)]
        if pending:
            return RaceState(False, number, current, alive, scheduled, pending, rounds,
                             dropped, metric, higher_is_better)
        entry = {"round": number, "seeds": list(current), "configurations": len(alive),
                 "dropped": []}
        for c in list(alive):  # A configuration with a failed trial leaves the race.
            failed = [t for t in needed if t.config_index == c and states[t] == trial_files.FAILED]
            if failed:
                reason = (trial_files.read_status(failed[0].trial_dir) or {}).get("reason", "")
                dropped[c] = {"round": number, "seeds": len(current), "label": labels[c],
                              "reason": f"trial {failed[0].trial_id} failed: {reason}"}
                entry["dropped"].append(c)
                alive.remove(c)
        values = {c: {s: _number(metrics(trials[(c, s)].trial_dir, study.phases).get(metric))
                      for s in current} for c in alive}
        best = None
        if alive:
            means = {c: _mean(values[c].values()) for c in alive}
            ranked = [c for c in alive if math.isfinite(means[c])]
            if ranked:
                sign = 1 if higher_is_better else -1
                best = max(ranked, key=lambda c: (sign * means[c], -c))
            entry.update(best=best, best_label=labels[best] if best is not None else None,
                         means={labels[c]: means[c] for c in alive})
        if best is not None and len(alive) > 1:
            others = [c for c in alive if c != best]
            compared = [stats.paired(values[c], values[best]) for c in others]
            adjusted = stats.holm([p.p_value for p in compared])
            for c, p, adj in zip(others, compared, adjusted, strict=True):
                verdict = stats.verdict(p, race.alpha, higher_is_better, p_value=adj)
                if verdict == stats.WORSE:
                    dropped[c] = {"round": number, "seeds": len(current), "label": labels[c],
                                  "difference": p.mean, "n": p.n, "p_value": p.p_value,
                                  "p_holm": adj,
                                  "reason": (f"worse than {labels[best]} on {metric}: "
                                             f"Δ {p.mean:+.4f} over {p.n} seeds, paired "
                                             f"p = {p.p_value:.3g}, Holm-adjusted "
                                             f"{adj:.3g} < {race.alpha}")}
                    entry["dropped"].append(c)
                    alive.remove(c)
        rounds.append(entry)
        if len(alive) <= 1 or count >= len(seeds):
            return RaceState(True, number, current, alive, scheduled, [], rounds, dropped,
                             metric, higher_is_better)
        count += 1
        number += 1


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _mean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _label(assignment, study) -> str:
    return report.label(assignment, study)


def to_dict(study: grid.Study, state: RaceState) -> dict:
    labels = [_label(a, study) for a in grid.configurations(study)]
    full = [t for t in grid.expand(study, "/")]
    spent = sum(trial_epochs(study, t) for t in state.scheduled)
    total = sum(trial_epochs(study, t) for t in full)
    return {
        "alpha": study.race.alpha, "min_seeds": study.race.min_seeds,
        "max_seeds": len(study.seeds), "seeds": list(study.seeds),
        "metric": state.metric, "higher_is_better": state.higher_is_better,
        "finished": state.finished, "round": state.round, "round_seeds": list(state.seeds),
        "alive": [labels[c] for c in state.alive],
        "winner": labels[state.alive[0]] if state.finished and len(state.alive) == 1 else None,
        "rounds": [{**r, "dropped": [labels[c] for c in r["dropped"]],
                    "best": r.get("best_label")} for r in state.rounds],
        "dropped": [{"configuration": labels[c], **{k: v for k, v in d.items()
                                                     if k != "label"}}
                    for c, d in sorted(state.dropped.items(), key=lambda i: i[1]["round"])],
        "trials": {"scheduled": len(state.scheduled), "full_grid": len(full)},
        "trial_epochs": {"race": spent, "full_grid": total,
                         "ratio": spent / total if total else math.nan},
        "pending": [t.trial_id for t in state.pending]}


def write(study: grid.Study, study_dir: str, state: RaceState) -> dict:
    content = to_dict(study, state)
    path = os.path.join(study_dir, RACE_JSON)
    if read_json_or_none(path) != _plain(content):
        atomic_write_json(path, content, default=str)
    return content


def _plain(content):
    import json
    return json.loads(json.dumps(content, sort_keys=True, default=str))


# The race section of results.md (from race.json): research.report renders it.
section = report.race_section
