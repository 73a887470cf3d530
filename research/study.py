"""A whole study: build it from the sweep's inputs, run this shard's trials, report.

`sweep.py` reads the flags and calls `make(...)`, then `run(...)` or `report_only(...)`.
The study's definition is saved to `<study>/sweep.json`, so `--report_only` with only
`--workdir` aggregates what every shard wrote.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

from flags.config import Config
from flags.errors import ConfigError
from research import grid, report, runner
from research.files import atomic_write_text

SWEEP_JSON = "sweep.json"


def base_config(file_flags: dict, cli_flags: dict, where: str = "--sweep_file") -> Config:
    """Config defaults, then a sweep file's "flags", then the flags given on the command line."""
    values = {}
    for name, raw in (file_flags or {}).items():
        if name in grid.SWEEP_FIELDS or name == "workdir":
            raise ConfigError(f"{where}: 'flags' sets {name!r}, which the sweep owns; use "
                              f"{grid.SWEEP_FIELDS.get(name, '--workdir')}")
        if name not in {f.name for f in dataclasses.fields(Config)}:
            raise ConfigError(f"{where}: unknown flag {name!r} in 'flags'; pass train.py flags")
        values[name] = grid.parse_value(name, raw, name)
    values.update(cli_flags)
    for name in grid.SWEEP_FIELDS:
        values.pop(name, None)
    if values.get("overwrite"):
        raise ConfigError("sweep.py does not take --overwrite; delete <workdir>/trials/<id> to "
                          "run a trial again (or pass --retry_failed for failed trials)")
    if values.get("csv_log") is False:
        raise ConfigError("sweep.py needs each phase's log.csv for its report; drop --nocsv_log")
    values.setdefault("verbose", 0)  # The sweep shows a bar over trials instead.
    return Config().replace(**values)


def make(study_dir: str, cli_flags: dict, phases=None, axes=(), seeds=None, baseline=None,
         sweep_file: str | None = None) -> grid.Study:
    """The study from a sweep file and/or the command line (the command line wins)."""
    content = grid.load_sweep_file(sweep_file) if sweep_file else {}
    file_axes = grid.axes_from_file(content, sweep_file) if sweep_file else []
    cli_axes = [grid.parse_axis(a) for a in axes]
    base = base_config(content.get("flags", {}), cli_flags).replace(workdir=study_dir)
    return grid.make_study(
        base,
        phases if phases is not None else content.get("phases", "head,finetune,evaluate"),
        file_axes + cli_axes,
        seeds if seeds is not None else content.get("seeds", "0,1,2"),
        baseline if baseline is not None else content.get("baseline"))


def load(study_dir: str) -> grid.Study:
    """The study a previous run saved in <study>/sweep.json."""
    path = os.path.join(study_dir, SWEEP_JSON)
    if not os.path.isfile(path):
        raise ConfigError(f"{path} does not exist: --report_only needs a study that ran, or "
                          "the study's flags (--axis, --seeds, ...)")
    return make(study_dir, {}, sweep_file=path)


def save(study: grid.Study, study_dir: str) -> None:
    path = os.path.join(study_dir, SWEEP_JSON)
    content = study.to_dict()
    previous = runner.read_json(path)
    if previous != json.loads(json.dumps(content)):
        # Not key-sorted: the order of the axes is the order of the grid.
        atomic_write_text(path, json.dumps(content, indent=1) + "\n")


def check_layers(trials) -> None:
    """--unfreeze_from names a block or layer of the backbone: checked once per backbone and
    value, before anything runs (a model built without weights)."""
    seen = set()
    for trial in trials:
        if "finetune" not in trial.phases:
            continue
        cfg = trial.config("finetune")
        key = (cfg.backbone, cfg.alpha, cfg.image_size, cfg.resolved_unfreeze_from)
        if key not in seen:
            seen.add(key)
            from model.build import check_unfreeze_from
            check_unfreeze_from(cfg)


def hparams_on_finished(study: grid.Study | None):
    """on_finished for runner.run_trial: the trial's HParams session (and the experiment)."""
    def write(trial_dir):
        from research import hparams
        content = runner.read_json(os.path.join(trial_dir, runner.TRIAL_JSON)) or {}
        if study is not None:
            hparams.write_experiment(study, os.path.dirname(os.path.dirname(trial_dir)))
        metrics = report.trial_metrics(trial_dir, content.get("phases", []))
        hparams.write_trial(trial_dir, content.get("axes", {}), content.get("group_id", ""),
                            metrics)
    return write


def run(study: grid.Study, study_dir: str, shard=(0, 1), parallel: int = 1,
        retry_failed: bool = False, debug: bool = False, worker_command=None,
        progress: bool = True) -> dict:
    """Runs this shard's unfinished trials; rewrites the report after each one.
    Returns {trial_id: outcome} for this shard's trials."""
    trials = grid.expand(study, study_dir)
    mine = grid.shard(trials, *shard)
    outcomes = {}
    todo = []
    for trial in mine:
        if retry_failed:
            runner.clear_failure(trial.trial_dir)
        outcome = runner.state(trial.trial_dir, study.phases)
        if outcome == runner.PENDING:
            todo.append(trial)
        else:
            outcomes[trial.trial_id] = outcome
    if todo:
        check_layers(todo)  # Before anything is written.
    os.makedirs(os.path.join(study_dir, grid.TRIALS_DIR), exist_ok=True)
    save(study, study_dir)
    bar = _bar(len(mine), len(mine) - len(todo), progress)
    by_dir = {t.trial_dir: t for t in todo}

    def done(trial, outcome):
        outcomes[trial.trial_id] = outcome
        if outcome == runner.FAILED:
            reason = (runner.read_status(trial.trial_dir) or {}).get("reason", "")
            bar.write(f"trial {trial.trial_id} failed: {reason}", file=sys.stderr)
        report.write(study, study_dir, trials)
        bar.update(1)
        bar.set_postfix_str(f"{trial.trial_id}: {outcome}")

    if todo:
        on_finished = hparams_on_finished(study)
        if parallel <= 1:
            for trial in todo:
                bar.set_postfix_str(f"running {trial.trial_id}")
                done(trial, runner.run_trial(trial.trial_dir, study.phases, trial.configs(),
                                             trial.to_dict(), debug=debug,
                                             on_finished=on_finished))
        else:
            for trial in todo:
                os.makedirs(trial.trial_dir, exist_ok=True)
                runner.write_trial_json(trial.trial_dir, trial.to_dict())
            runner.run_parallel([t.trial_dir for t in todo], parallel, worker_command,
                                lambda folder, outcome: done(by_dir[folder], outcome))
    bar.close()
    report.write(study, study_dir, trials)
    return outcomes


def _bar(total, initial, enabled):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="trial", desc="sweep", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)


def run_one(trial_dir: str, debug: bool = False) -> str:
    """A worker process's job (--run_trial): the trial described by its trial.json."""
    phases, configs = runner.configs_from_trial_json(trial_dir)
    content = runner.read_json(os.path.join(trial_dir, runner.TRIAL_JSON))
    return runner.run_trial(trial_dir, phases, configs, content, debug=debug,
                            on_finished=hparams_on_finished(_study_of(trial_dir)))


def _study_of(trial_dir: str):
    study_dir = os.path.dirname(os.path.dirname(os.path.abspath(trial_dir)))
    try:
        return load(study_dir)
    except ConfigError:
        return None
