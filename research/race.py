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

A decided round is history: race.json records each round's configurations (their
group ids, `ids`) and drops, and the race replays them as recorded (`_replay`), never
deciding them again. A configuration added to the grid later (not in any decided
round) joins at the next round, which adds the next seed as always (a race that ran
its last seed: a round on the same seeds, which the others have already run); more
seeds (a larger `--max_seeds`) continue the race where it ended; seeds that no longer
start with a decided round's seeds are refused in one line. `--retry_failed` decides
again the rounds from the first that dropped a configuration for a failed trial.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os

from tapefit.flags.errors import ConfigError
from tapefit.layout import paths
from tapefit.layout.atomic import atomic_write_json, read_json_file, read_json_or_none
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
            higher_is_better: bool = True, metrics=None,
            retry_failed: bool = False) -> RaceState:
    """The race as far as the trials on disk take it (see the module docstring), its
    decided rounds as race.json records them (`recorded_rounds`: history, never decided
    again; `retry_failed`: from the first round that dropped a failed trial on).

    `metrics(trial_dir, phases) -> {metric: value}` reads a trial's metrics
    (default: research.report.trial_metrics)."""
    if metrics is None:
        metrics = report.trial_metrics
    race = study.race
    labels = [_label(a, study) for a in grid.configurations(study)]
    trials = {(t.config_index, t.seed): t for t in grid.expand(study, study_dir)}
    seeds = study.seeds
    ids = [trials[(c, seeds[0])].group_id for c in range(len(labels))]
    alive = list(range(len(labels)))
    scheduled, rounds, dropped = [], [], {}
    history = recorded_rounds(study_dir, retry_failed)
    if history:
        alive = _replay(history, study_dir, seeds, labels, ids, trials, scheduled, rounds,
                        dropped)
        last = len(history[-1]["seeds"])
        joining = _newcomers(rounds, ids) & set(alive)
        if not joining and (len(alive) <= 1 or last >= len(seeds)):  # Decided.
            return RaceState(True, len(rounds), tuple(seeds[:last]), alive, scheduled, [],
                             rounds, dropped, metric, higher_is_better)
        # The next round adds a seed; a race that ran its last seed gets a round on the
        # same seeds for the configurations that join it.
        count = last + 1 if last < len(seeds) else last
    else:
        count = min(race.min_seeds, len(seeds))
    number = len(rounds) + 1
    while True:
        current = tuple(seeds[:count])
        needed = [trials[(c, s)] for s in current for c in alive]
        scheduled += [t for t in needed if t not in scheduled]
        states = {t: trial_files.state(t.trial_dir, study.phases) for t in needed}
        pending = [t for t in needed if states[t] not in (trial_files.FINISHED, trial_files.FAILED)]
        if pending:
            return RaceState(False, number, current, alive, scheduled, pending, rounds,
                             dropped, metric, higher_is_better)
        joined = sorted(_newcomers(rounds, ids) & set(alive)) if rounds else []
        entry = {"round": number, "seeds": list(current), "configurations": len(alive),
                 "in_race": [labels[c] for c in alive], "ids": [ids[c] for c in alive],
                 **({"joined": [labels[c] for c in joined]} if joined else {}),
                 "dropped": []}
        for c in list(alive):  # A configuration with a failed trial leaves the race.
            failed = [t for t in needed if t.config_index == c and states[t] == trial_files.FAILED]
            if failed:
                reason = (trial_files.read_status(failed[0].trial_dir) or {}).get("reason", "")
                dropped[c] = {"round": number, "seeds": len(current), "label": labels[c],
                              "failed": True,
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
            entry.update(best=labels[best] if best is not None else None,
                         best_label=labels[best] if best is not None else None,
                         means={labels[c]: means[c] for c in alive})
        if best is not None and len(alive) > 1:
            decided = drops(values, best, [c for c in alive if c != best], race,
                            higher_is_better, metric, labels)
            for c, info in decided.items():
                dropped[c] = {"round": number, "seeds": len(current), "label": labels[c],
                              **info}
                entry["dropped"].append(c)
                alive.remove(c)
        entry["dropped"] = [labels[c] for c in entry["dropped"]]
        rounds.append(entry)
        if len(alive) <= 1 or count >= len(seeds):
            return RaceState(True, number, current, alive, scheduled, [], rounds, dropped,
                             metric, higher_is_better)
        count += 1
        number += 1


def drops(values: dict, best: int, others: list, race: grid.Race, higher_is_better: bool,
          metric: str, labels: list) -> dict:
    """The one decision of a round: {config index: what race.json says of its drop} for
    the configurations of `others` significantly worse than `best` (each compared with
    it paired over the round's seeds, `values[c] = {seed: metric}`, Holm-adjusted over
    these comparisons, at `race.alpha`)."""
    compared = [stats.paired(values[c], values[best]) for c in others]
    adjusted = stats.holm([p.p_value for p in compared])
    out = {}
    for c, p, adj in zip(others, compared, adjusted, strict=True):
        verdict = stats.verdict(p, race.alpha, higher_is_better, p_value=adj)
        if verdict == stats.WORSE:
            out[c] = {"difference": p.mean, "n": p.n, "p_value": p.p_value, "p_holm": adj,
                      "reason": (f"worse than {labels[best]} on {metric}: "
                                 f"Δ {p.mean:+.4f} over {p.n} seeds, paired "
                                 f"p = {p.p_value:.3g}, Holm-adjusted "
                                 f"{adj:.3g} < {race.alpha}")}
    return out


def _newcomers(rounds: list, ids: list) -> set:
    """The configurations (indices) that no decided round had."""
    seen = {i for r in rounds for i in r.get("ids", ())}
    return {c for c, i in enumerate(ids) if i not in seen}


def recorded_rounds(study_dir: str, retry_failed: bool = False) -> list:
    """race.json's decided rounds, each with the ids of its configurations (an older
    race.json without them: every configuration it names, less those dropped before).
    A folder, FIFO or device in its place is one line; a damaged race.json is a warning
    (its rounds are decided again from the trials). `retry_failed`: the rounds before the
    first that dropped a configuration for a failed trial."""
    path = os.path.join(study_dir, RACE_JSON)
    content, problem = read_json_file(path, kind=dict)
    if problem and problem.startswith("not a regular file"):
        raise ConfigError(f"{path} is {problem}, where the race records its rounds; move "
                          "it away (the race is then decided again from the trials)")
    if problem:
        logging.warning("%s is %s: the race's rounds are decided again from the trials",
                        path, problem)
        return []
    if content is None:
        return []
    try:
        rounds = [dict(r) for r in content.get("rounds", [])]
        drops_by_round = {}
        for d in content.get("dropped", []):
            drops_by_round.setdefault(d["round"], []).append(d)
        if any(not isinstance(r.get("seeds"), list) or not isinstance(r.get("dropped"), list)
               for r in rounds):
            raise TypeError
        if any("ids" not in r for r in rounds):  # An older race.json: labels only.
            left = list(dict.fromkeys(list(content.get("alive", []))
                                      + [d["configuration"] for d in content["dropped"]]))
            for r in rounds:
                r.setdefault("in_race", list(left))
                left = [x for x in left if x not in r["dropped"]]
    except (TypeError, KeyError, AttributeError, ValueError):
        logging.warning("%s is damaged: the race's rounds are decided again from the trials",
                        path)
        return []
    for r in rounds:
        r["_drops"] = drops_by_round.get(r.get("round"), [])
    if retry_failed:
        for index, r in enumerate(rounds):
            if any(d.get("failed") or str(d.get("reason", "")).startswith("trial ")
                   and " failed: " in str(d.get("reason", "")) for d in r["_drops"]):
                return rounds[:index]
    return rounds


def _replay(history, study_dir, seeds, labels, ids, trials, scheduled, rounds,
            dropped) -> list:
    """The decided rounds as recorded: their trials scheduled, their drops kept. Returns
    the configurations left (in grid order), with those no round had (they join)."""
    by_id = {i: c for c, i in enumerate(ids)}
    by_label = {x: c for c, x in enumerate(labels)}
    path = os.path.join(study_dir, RACE_JSON)
    out = set()
    for r in history:
        ran = tuple(r["seeds"])
        if ran != tuple(seeds[:len(ran)]):
            raise ConfigError(
                f"{path}: round {r.get('round')} ran seeds {','.join(map(str, ran))}, and the "
                f"study's seeds now start {','.join(map(str, seeds[:len(ran)]))}; a decided "
                "round is history: keep the study's first seeds (add seeds at the end, "
                "--max_seeds as large), or race anew in another --workdir")
        present = ([by_id[i] for i in r["ids"] if i in by_id] if "ids" in r
                   else [by_label[x] for x in r["in_race"] if x in by_label])
        scheduled += [trials[(c, s)] for s in ran for c in sorted(present)
                      if trials[(c, s)] not in scheduled]
        gone = set()
        for d in r["_drops"]:
            c = by_id.get(d.get("id")) if "id" in d else by_label.get(d.get("configuration"))
            if c is None:
                continue  # A configuration no longer in the grid.
            dropped[c] = {"label": labels[c], **{k: v for k, v in d.items()
                                                 if k not in ("configuration", "id")}}
            gone.add(c)
        entry = {k: v for k, v in r.items() if k != "_drops"}
        entry.setdefault("ids", [ids[c] for c in present])
        rounds.append(entry)
        out = set(present) - gone
    newcomers = _newcomers(rounds, ids)
    return sorted(out | newcomers)


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
    ids = [t.group_id for t in full[:len(labels)]]
    spent = sum(trial_epochs(study, t) for t in state.scheduled)
    total = sum(trial_epochs(study, t) for t in full)
    return {
        "alpha": study.race.alpha, "min_seeds": study.race.min_seeds,
        "max_seeds": len(study.seeds), "seeds": list(study.seeds),
        "metric": state.metric, "higher_is_better": state.higher_is_better,
        "finished": state.finished, "round": state.round, "round_seeds": list(state.seeds),
        "alive": [labels[c] for c in state.alive],
        "winner": labels[state.alive[0]] if state.finished and len(state.alive) == 1 else None,
        "rounds": state.rounds,
        "dropped": [{"configuration": labels[c], "id": ids[c],
                     **{k: v for k, v in d.items() if k != "label"}}
                    for c, d in sorted(state.dropped.items(), key=lambda i: i[1]["round"])],
        "trials": {"scheduled": len(state.scheduled), "full_grid": len(full)},
        "trial_epochs": {"race": spent, "full_grid": total,
                         "ratio": spent / total if total else math.nan},
        "pending": [t.trial_id for t in state.pending]}


def write(study: grid.Study, study_dir: str, state: RaceState) -> dict:
    content = to_dict(study, state)
    path = os.path.join(study_dir, RACE_JSON)
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ConfigError(f"{path} is not a regular file (a folder, FIFO or device), where the "
                          "race records its rounds; move it away (the race is then decided "
                          "again from the trials)")
    if read_json_or_none(path) != _plain(content):
        atomic_write_json(path, content, default=str)
    return content


def _plain(content):
    import json
    return json.loads(json.dumps(content, sort_keys=True, default=str))


# The race section of results.md (from race.json): research.report renders it.
section = report.race_section
