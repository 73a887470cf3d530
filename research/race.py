"""Racing (`sweep.py --race`): seeds are added in rounds, and a configuration that is
significantly worse than the current best is dropped after each round.

Round 1 runs every configuration on the first `min_seeds` seeds of the study; each
later round adds the next seed for the configurations still in the race. When a
round's trials are all done (finished or failed):
- a configuration with a failed trial in the round leaves the race (a trial that
  cannot finish cannot be compared), and so does one with a damaged trial
  (`report.DAMAGED`: a file of it is not what it should be; never a missing seed):
  "trial X damaged: <why>"; `--retry_failed` decides both again;
- `drops` decides the rest — the one decision function (bench/calibration.py calls it
  too): `stats.race_look`, the best mean of the selection metric (validation,
  `--select_by`; never the test set; ties: the first in grid order), every other
  configuration against it by the exact sign-flip test over the round's seeds, dropped
  when its p is at most the round's level `stats.race_levels(k, min_seeds, max_seeds,
  alpha)[n]`: α spent once over the whole run (the rounds and the k (k - 1) / 2 pairs),
  so the chance of ever dropping a configuration that is not worse is <= --race_alpha
  (`_plan`: what a grown grid, a repeated round or a larger --max_seeds do to it);
- a winner is declared only when every other configuration was dropped.
The race ends when one configuration is left or the last seed has run. race.json
records each round's plan and level (the threshold used) and each drop's p,
p_adjusted and level.

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
again the rounds from the first that dropped a configuration for a failed (or damaged)
trial. A round decided by the older per-look rule (Holm at α after every round; no
"plan" in race.json) is history too and is replayed as recorded; new rounds use the
rule above.
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
        rows = {}
        for c in list(alive):  # A failed or damaged trial: the configuration leaves.
            for t in sorted((t for t in needed if t.config_index == c),
                            key=lambda t: t.seed):
                if states[t] == trial_files.FAILED:
                    why = (trial_files.read_status(t.trial_dir) or {}).get("reason", "")
                    info = {"failed": True, "reason": f"trial {t.trial_id} failed: {why}"}
                else:
                    rows[t] = metrics(t.trial_dir, study.phases)
                    if rows[t].get("status") != report.DAMAGED:
                        continue
                    info = {"damaged": True, "reason": f"trial {t.trial_id} damaged: "
                                                       f"{rows[t].get('reason', '')}"}
                dropped[c] = {"round": number, "seeds": len(current), "label": labels[c],
                              **info}
                entry["dropped"].append(c)
                alive.remove(c)
                break
        values = {c: {s: _number(rows[trials[(c, s)]].get(metric)) for s in current}
                  for c in alive}
        plan = _plan(rounds, entry["ids"], len(current), len(seeds), race)
        entry["plan"] = plan
        if alive:
            means = {c: _mean(values[c].values()) for c in alive}
            look, decided = drops(values, plan["k"], plan["from_seeds"], plan["max_seeds"],
                                  plan["alpha"], higher_is_better, metric, labels)
            best = look.best
            entry.update(best=labels[best] if best is not None else None,
                         best_label=labels[best] if best is not None else None,
                         means={labels[c]: means[c] for c in alive},
                         level=look.level, alpha_spent=stats.race_pairs(plan["k"]) * look.level)
            for c, info in decided.items():
                dropped[c] = {"round": number, "seeds": len(current), "label": labels[c],
                              **info}
                entry["dropped"].append(c)
                alive.remove(c)
        else:
            entry.update(level=0.0, alpha_spent=0.0)
        entry["dropped"] = [labels[c] for c in entry["dropped"]]
        rounds.append(entry)
        if len(alive) <= 1 or count >= len(seeds):
            return RaceState(True, number, current, alive, scheduled, [], rounds, dropped,
                             metric, higher_is_better)
        count += 1
        number += 1


def drops(values: dict, k: int, min_seeds: int, max_seeds: int, alpha: float,
          higher_is_better: bool = True, metric: str = "the metric", labels=None):
    """The one decision of a round (the race and bench/calibration.py call it): `values`
    {configuration still in the race: {seed: metric}} on the round's seeds, in grid order;
    the round's plan (`k` configurations, looks from `min_seeds` to `max_seeds`, `alpha`
    to spend over them: `stats.race_levels`). Returns (the `stats.RaceLook`, {config: what
    race.json says of its drop}) — those whose exact sign-flip p against the round's best
    is at most the look's level (`stats.race_look`)."""
    look = stats.race_look(values, k, min_seeds, max_seeds, alpha, higher_is_better)
    name = (lambda c: labels[c]) if labels is not None else str
    out = {}
    for c in look.dropped:
        claim = look.claims[c]
        p = claim.paired
        out[c] = {"difference": p.mean, "n": p.n, "p": claim.p,
                  "p_adjusted": claim.p_adjusted, "level": claim.level, "alpha": alpha,
                  "reason": (f"worse than {name(look.best)} on {metric}: Δ {p.mean:+.4f} "
                             f"over {p.n} seeds, exact sign-flip p = {claim.p:.3g} ≤ "
                             f"this round's level {claim.level:.3g} (race-adjusted "
                             f"{claim.p_adjusted:.3g} ≤ α {alpha:g}, over the whole race)")}
    return look, out


def _plan(rounds: list, present: list, n: int, max_seeds: int, race: grid.Race) -> dict:
    """The levels' plan for a round of `n` seeds: {"k", "from_seeds", "max_seeds",
    "alpha"} for `stats.race_levels`. The plan of the previous round when nothing changed
    (the same configurations, the next seed, the same last seed): a race's whole run is
    race_levels(k, min_seeds, max_seeds, α), k the configurations that started it. When
    configurations join (k = those of every round so far and the joining ones), a round
    repeats its seeds, or --max_seeds changes, the rest of the race is planned anew:
    race_levels(k, n, max_seeds, α − the α the decided rounds spent), so that the α
    spent over the whole run (race_pairs(k) × level per round) stays <= --race_alpha.
    Rounds decided by the old per-look rule (no "plan") spent nothing we can count: the
    rounds after them get their own α."""
    seen = {i for r in rounds for i in r.get("ids", ())}
    k = len(seen | set(present))  # `present`: the ids of the round's configurations.
    planned = [r for r in rounds if isinstance(r.get("plan"), dict)]
    if not planned:
        return {"k": max(k, 1), "from_seeds": min(race.min_seeds, n) if not rounds else n,
                "max_seeds": max_seeds, "alpha": race.alpha}
    last = planned[-1]["plan"]
    if (last.get("k") == k and last.get("max_seeds") == max_seeds
            and n > len(rounds[-1]["seeds"])):
        return dict(last)
    spent = sum(_float(r.get("alpha_spent")) for r in planned)
    return {"k": k, "from_seeds": n, "max_seeds": max_seeds,
            "alpha": max(0.0, race.alpha - spent)}


def _float(value) -> float:
    v = _number(value)
    return v if math.isfinite(v) else 0.0


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
            if any(d.get("failed") or d.get("damaged")
                   or str(d.get("reason", "")).startswith("trial ")
                   and (" failed: " in str(d.get("reason", ""))
                        or " damaged: " in str(d.get("reason", ""))) for d in r["_drops"]):
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
        "levels": _levels(state.rounds),
        "rounds": state.rounds,
        "dropped": [{"configuration": labels[c], "id": ids[c],
                     **{k: v for k, v in d.items() if k != "label"}}
                    for c, d in sorted(state.dropped.items(), key=lambda i: i[1]["round"])],
        "trials": {"scheduled": len(state.scheduled), "full_grid": len(full)},
        "trial_epochs": {"race": spent, "full_grid": total,
                         "ratio": spent / total if total else math.nan},
        "pending": [t.trial_id for t in state.pending]}


def _levels(rounds: list) -> dict:
    """{seeds: level} of the plan in force (the last round's; {} before any round)."""
    plans = [r["plan"] for r in rounds if isinstance(r.get("plan"), dict)]
    if not plans:
        return {}
    p = plans[-1]
    return {str(n): level for n, level in stats.race_levels(
        p["k"], p["from_seeds"], p["max_seeds"], p["alpha"]).items()}


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
