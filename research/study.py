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
import time

from tapefit.flags.config import Config
from tapefit.flags.errors import ConfigError
from tapefit.layout import paths
from tapefit.layout.atomic import atomic_write_text, read_json_or_none
from tapefit.research import grid, report, runner, trial_files
from tapefit.research import options as options_lib
from tapefit.research.options import StudyOptions

SWEEP_JSON = paths.SWEEP_JSON


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
         sweep_file: str | None = None, race=None, flips=None) -> grid.Study:
    """The study from a sweep file and/or the command line (the command line wins).

    `race`: a `grid.Race` (command line), else the sweep file's "race". In a race
    without seeds the seeds are 0..max_seeds-1."""
    content = read_sweep_file(sweep_file)[0] if sweep_file else {}
    file_axes = grid.axes_from_file(content, sweep_file) if sweep_file else []
    cli_axes = [grid.parse_axis(a) for a in axes]
    file_flags = content.get("flags", {})
    base = base_config(file_flags, cli_flags).replace(workdir=study_dir)
    race = race if race is not None else grid.race_from(content.get("race"))
    if seeds is None:
        seeds = content.get("seeds")
    if seeds is None:
        seeds = (list(range(race.max_seeds)) if race is not None and race.max_seeds
                 else "0,1,2")
    return grid.make_study(
        base,
        phases if phases is not None else content.get("phases", "head,finetune,evaluate"),
        file_axes + cli_axes, seeds,
        baseline if baseline is not None else content.get("baseline"),
        explicit=set(file_flags) | set(cli_flags), race=race,
        flips=flips if flips else content.get("flips", ()))


def read_sweep_file(path: str) -> tuple[dict, dict | None]:
    """A sweep file (or a study's sweep.json): (its study keys, its "settings" or None),
    every problem one line: the keys and their JSON types by `grid.load_sweep_file`;
    "settings" (research/options.py) and the race's value types here."""
    content = grid.load_sweep_file(path, {options_lib.SETTINGS_KEY: (dict,)})
    settings = content.pop(options_lib.SETTINGS_KEY, None)
    where = f"--sweep_file={path}"
    if settings is not None:
        settings = options_lib.check_settings(settings, where)
    options_lib.check_race(content.get("race"), where)
    return content, settings


def prepare(study_dir: str, cli_flags: dict, options: StudyOptions, phases=None, axes=(),
            seeds=None, baseline=None, sweep_file: str | None = None,
            saved: bool = False) -> tuple[grid.Study, StudyOptions]:
    """The study and its options, with the settings the study stored in its sweep.json
    (`options_lib.merge_stored`: a differing value given again is one line). `saved`:
    the study is the one in <study>/sweep.json (--report_only with only --workdir).
    A sweep.json without stored settings (an older study): a race's are its race.json's
    metric, else the given ones (or the defaults); `save` stores them."""
    stored, stored_race = stored_settings(study_dir)
    path = os.path.join(study_dir, SWEEP_JSON)
    if saved:
        if not os.path.isfile(path):
            raise ConfigError(f"{path} does not exist: --report_only needs a study that ran, "
                              "or the study's flags (--axis, --seeds, ...)")
        sweep_file = path
    content, file_settings = read_sweep_file(sweep_file) if sweep_file else ({}, None)
    options = options_lib.merge_stored(options, stored, stored_race, file_settings,
                                       content.get("race"), path)
    if saved:
        study = make(study_dir, {}, sweep_file=path, race=options.race_settings())
        if options.flips:  # Pairs added to a study that ran: kept in its sweep.json.
            study = dataclasses.replace(study, flips=tuple(dict.fromkeys(
                study.flips + grid.parse_flips(study.axes, options.flips))))
    else:
        study = make(study_dir, cli_flags, phases=phases, axes=axes, seeds=seeds,
                     baseline=baseline, sweep_file=sweep_file, race=options.race_settings(),
                     flips=list(options.flips))
    return study, options


def stored_settings(study_dir: str) -> tuple[dict | None, dict | None]:
    """(sweep.json's "settings", its "race") of the study in `study_dir` (None: none).
    An older sweep.json has no "settings": a race's race.json names its metric."""
    content = read_json_or_none(os.path.join(study_dir, SWEEP_JSON))
    if not isinstance(content, dict):
        return None, None
    race = content.get("race") if isinstance(content.get("race"), dict) else None
    settings = content.get(options_lib.SETTINGS_KEY)
    if not isinstance(settings, dict):
        settings = None
        from tapefit.research import race as race_lib
        recorded = read_json_or_none(os.path.join(study_dir, race_lib.RACE_JSON))
        metric = recorded.get("metric") if isinstance(recorded, dict) else None
        if content.get("race") and metric in options_lib.SELECT_BY:
            settings = {"select_by": metric}
    return settings, race


def with_flips(study: grid.Study, study_dir: str, texts) -> grid.Study:
    """The study with further --flips pairs (checked first), saved in its sweep.json."""
    study = dataclasses.replace(study, flips=tuple(dict.fromkeys(
        study.flips + grid.parse_flips(study.axes, texts))))
    save(study, study_dir)
    return study


def _with_saved_flips(study: grid.Study, study_dir: str) -> grid.Study:
    """The --flips pairs an earlier run of the study saved stay (a shard or a re-run
    without --flips does not drop them)."""
    saved = (read_json_or_none(os.path.join(study_dir, SWEEP_JSON)) or {}).get("flips")
    if not saved or not isinstance(saved, (list, str)):
        return study
    try:
        pairs = grid.parse_flips(study.axes, saved)
    except ConfigError as e:  # Pairs of another grid (the axes changed).
        import logging
        logging.warning("%s's --flips pairs are left out: %s", SWEEP_JSON, e)
        return study
    return dataclasses.replace(study, flips=tuple(dict.fromkeys(study.flips + pairs)))


def load(study_dir: str) -> grid.Study:
    """The study a previous run saved in <study>/sweep.json."""
    return prepare(study_dir, {}, StudyOptions(), saved=True)[0]


def save(study: grid.Study, study_dir: str, options: StudyOptions | None = None) -> None:
    """sweep.json: the study's definition and its settings ("settings": `options`'
    (research/options.py), or, without `options`, those already stored)."""
    path = os.path.join(study_dir, SWEEP_JSON)
    content = study.to_dict()
    previous = read_json_or_none(path)
    settings = (options.settings() if options is not None
                else stored_settings(study_dir)[0])
    if settings:
        content = {options_lib.SETTINGS_KEY: settings, **content}
    if previous != json.loads(json.dumps(content)):
        # Not key-sorted: the order of the axes is the order of the grid.
        atomic_write_text(path, json.dumps(content, indent=1) + "\n")


def check_trials(study: grid.Study, trials, pending=()) -> None:
    """Every trial's phases checked as train.py would check them, before anything runs
    or is written: a value that can only fail (`--epochs=0`, an image too small for the
    backbone, an unknown `--unfreeze_from`) is one line naming the trial's axis value,
    not a failure per trial. `pending`: the trials that will run (their input files —
    a finder run for --learning_rate=auto, head weights for a finetune without head —
    must be there)."""
    from tapefit.model.backbones import BACKBONES
    seen = set()
    for trial in trials:
        where = f"trial {trial.trial_id}" if trial.assignment else "the base flags"
        for phase in study.phases:
            cfg = trial.config(phase)
            if phase in ("head", "finetune") and cfg.epochs < 1:
                raise ConfigError(f"--epochs={cfg.epochs} trains nothing in the {phase} phase "
                                  f"({where}); pass --epochs=1 or more")
            backbone = BACKBONES[cfg.backbone]
            if cfg.image_size < backbone.min_size:
                raise ConfigError(f"--image_size={cfg.image_size} is too small for "
                                  f"{cfg.backbone} ({where}); pass --image_size="
                                  f"{backbone.min_size} or more")
            if phase == "finetune":
                key = (cfg.backbone, cfg.alpha, cfg.image_size, cfg.resolved_unfreeze_from)
                if key not in seen:
                    seen.add(key)
                    from tapefit.model.build import check_unfreeze_from
                    check_unfreeze_from(cfg)
    for trial in pending:
        for index, phase in enumerate(study.phases):
            if trial_files.phase_done(trial.trial_dir, phase):
                continue
            cfg = trial.config(phase)
            if cfg.learning_rate == "auto" and phase in ("head", "finetune"):
                from tapefit.loops.lr_find import resolve_learning_rate
                try:
                    resolve_learning_rate(cfg)
                except ConfigError:
                    raise ConfigError(
                        f"--learning_rate=auto needs a learning-rate finder run in each "
                        f"trial's folder (trial {trial.trial_id} has none); sweep.py does "
                        "not run the finder: pass numbers (e.g. --axis=learning_rate="
                        "1e-3,3e-3)") from None
            earlier = study.phases[:index]
            if phase == "finetune" and "head" not in earlier and not cfg.init_checkpoint \
                    and not os.path.isfile(paths.run_file(trial.trial_dir, "head",
                                                      paths.BEST_WEIGHTS)):
                raise ConfigError(f"--phases={','.join(study.phases)}: the finetune phase "
                                  f"needs head weights, and trial {trial.trial_id} has none; "
                                  "add head (--phases=head,finetune,...) or pass "
                                  "--init_checkpoint=PATH")
            if phase == "evaluate" and not {"head", "finetune"} & set(earlier) and not any(
                    os.path.isfile(paths.run_file(trial.trial_dir, p, paths.BEST_WEIGHTS))
                    for p in ("head", "finetune")):
                raise ConfigError(f"--phases={','.join(study.phases)}: evaluate needs trained "
                                  f"weights, and trial {trial.trial_id} has none; add the "
                                  "phases that train (--phases=head,evaluate)")


def _index_runs(study: grid.Study, study_dir: str) -> None:
    """<study>/tensorboard/ (research/tensorboard_runs.py) from the start: every run of
    the grid once, linked ahead of its training (TensorBoard shows it as it is written)."""
    from tapefit.research import tensorboard_runs
    tensorboard_runs.write_index(study_dir, study)


def check_data_unchanged(trials) -> None:
    """The photos a study's trials ran on are the photos its flags name now: a trial's
    trial.json records the identity (flags/identity.py) of each phase, with the
    fingerprint of its data. Photos added, removed or changed since would put two datasets
    in one report (and, through shared phases, a head of the old photos under a finetune
    of the new): one line, before anything runs or is written."""
    for trial in trials:
        content = read_json_or_none(os.path.join(trial.trial_dir, paths.TRIAL_JSON))
        recorded = content.get("identity") if isinstance(content, dict) else None
        if not isinstance(recorded, dict):
            continue  # Not started, or made before identities.
        for phase, record in recorded.items():
            if phase not in trial.phases or not isinstance(record, dict):
                continue
            now = trial.identity(phase)["data"]
            if record.get("data") != now:
                raise ConfigError(
                    f"the data of this study changed since its trial {trial.trial_id} ran "
                    f"(its {phase} phase: fingerprint {str(record.get('data'))[:8]}…, the "
                    f"data now: {now[:8]}…; photos added, removed or changed): restore the "
                    "photos it ran on, or start a study of the new photos in another "
                    "--workdir")


def hparams_on_finished(study: grid.Study | None):
    """on_finished for runner.run_trial: the trial's HParams session (and the experiment)."""
    def write(trial_dir):
        from tapefit.research import hparams
        content = read_json_or_none(os.path.join(trial_dir, paths.TRIAL_JSON)) or {}
        if study is not None:
            hparams.write_experiment(study, os.path.dirname(os.path.dirname(trial_dir)))
        metrics = report.trial_metrics(trial_dir, content.get("phases", []))
        hparams.write_trial(trial_dir, content.get("axes", {}), content.get("group_id", ""),
                            metrics)
    return write


def _options(options: StudyOptions | None, changes: dict) -> StudyOptions:
    """`options` (default: StudyOptions()) with keyword changes (the older keyword API:
    shard=, parallel=, select_by=, ...)."""
    return (options or StudyOptions()).replace(**changes) if changes else (
        options or StudyOptions())


def run(study: grid.Study, study_dir: str, options: StudyOptions | None = None,
        worker_command=None, **changes) -> dict:
    """Runs this shard's unfinished trials; rewrites the report after each one.
    Returns {trial_id: outcome} for this shard's trials (a race: every trial this
    process ran or found done).

    `options` (research/options.py; keywords change single fields): `share_phases`:
    trials with identical phases up to one (same flags, same seed) run it once
    (research/runner.py); `select_by`: the validation metric that selects (and that a
    race compares), saved with the study."""
    options = _options(options, changes)
    shard, parallel, debug = options.shard, options.parallel, options.debug
    progress, share_phases, select_by = options.progress, options.share_phases, \
        options.select_by
    study = _with_saved_flips(study, study_dir)
    trials = grid.expand(study, study_dir)
    check_data_unchanged(trials)  # Before anything is written.
    if options.retry_failed:
        for trial in grid.shard(trials, *shard):
            if trial_files.state(trial.trial_dir, study.phases) == trial_files.FAILED:
                runner.clear_failure(trial.trial_dir)
    if study.race is not None:
        return _run_race(study, study_dir, trials, options, worker_command)
    mine = grid.shard(trials, *shard)
    outcomes = {}
    todo = []
    for trial in mine:
        outcome = trial_files.state(trial.trial_dir, study.phases)
        if outcome == trial_files.PENDING:
            todo.append(trial)
        else:
            outcomes[trial.trial_id] = outcome
    check_trials(study, trials, todo)  # Before anything is written.
    os.makedirs(os.path.join(study_dir, paths.TRIALS_DIR), exist_ok=True)
    save(study, study_dir, options)
    _index_runs(study, study_dir)
    bar = _bar(len(mine), len(mine) - len(todo), progress)

    def write_report():
        _write_report(study, study_dir, trials, select_by, flips=False)

    outcomes.update(_run_trials(study, todo, parallel, debug, worker_command, share_phases,
                                bar, write_report))
    bar.close()
    _write_report(study, study_dir, trials, select_by)  # The last, with the flips.
    return outcomes


# The script each worker of --parallel runs (`--run_trial=DIR`): sweep.py beside the
# package's modules, in a checkout and in an installed copy alike.
SWEEP_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "sweep.py")


def execute(study: grid.Study, study_dir: str, options: StudyOptions | None = None,
            **changes) -> dict:
    """What `tapefit sweep` and `tapefit.study` do with a study: check that its folder
    and caches are writable (before a trial folder is written), then `run` this shard's
    trials, --parallel ones as workers of sweep.py (`options.worker_args`: flags each
    worker gets). Returns {trial_id: outcome}."""
    from tapefit.loops.rundir.run_dir import check_cache_dirs, check_writable
    options = _options(options, changes)
    check_writable(study_dir)
    check_cache_dirs(study.base)
    extra = list(options.worker_args)
    return run(study, study_dir, options,
               worker_command=lambda trial_dir: runner.worker_argv(SWEEP_SCRIPT, trial_dir,
                                                                   extra))


def report_only(study: grid.Study, study_dir: str, options: StudyOptions) -> dict:
    """`--report_only`: the report (and a race's race.json) rewritten from what is on
    disk under the study's settings, which sweep.json keeps (an older sweep.json gets
    them now). Returns report.write's result (its "markdown": results.md)."""
    os.makedirs(study_dir, exist_ok=True)
    try:
        save(study, study_dir, options)
    except OSError as e:  # A read-only study still reports (what can be written).
        import logging
        logging.warning("%s is not updated: %s", os.path.join(study_dir, SWEEP_JSON), e)
    trials = (race_state(study, study_dir, options.select_by)
              if study.race is not None else None)
    return _write_report(study, study_dir, trials, options.select_by)


def outcome_line(study: grid.Study, study_dir: str, shard, outcomes: dict) -> str:
    """The line `tapefit sweep` ends with: trials by outcome, a race's state, the report."""
    counts = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    race_line = ""
    if study.race is not None:
        from tapefit.research import race as race_lib
        content = read_json_or_none(os.path.join(study_dir, race_lib.RACE_JSON)) or {}
        epochs = content.get("trial_epochs", {})
        left = (f"winner {content['winner']}" if content.get("winner")
                else "left: " + "; ".join(content.get("alive", [])))
        race_line = (f"; race: {left} after round {content.get('round')}, trial-epochs "
                     f"{epochs.get('race')} of the full grid's {epochs.get('full_grid')}")
    return (f"sweep {study_dir} (shard {shard[0]}/{shard[1]}): "
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + race_line
            + f"; report in {os.path.join(study_dir, report.RESULTS_MD)}")

def _run_trials(study, todo, parallel, debug, worker_command, share_phases, bar,
                write_report) -> dict:
    """Runs `todo` (in this process, or as worker processes); {trial_id: outcome}."""
    outcomes = {}
    by_dir = {t.trial_dir: t for t in todo}

    def done(trial, outcome):
        outcomes[trial.trial_id] = outcome
        if outcome == trial_files.FAILED:
            reason = (trial_files.read_status(trial.trial_dir) or {}).get("reason", "")
            bar.write(f"trial {trial.trial_id} failed: {reason}", file=sys.stderr)
        write_report()
        bar.set_postfix_str(f"{trial.trial_id}: {outcome}")
        bar.update(1)  # After the postfix: off a terminal the line that names the trial.

    if not todo:
        return outcomes
    on_finished = hparams_on_finished(study)
    if parallel <= 1:
        # First pass: a trial whose shared phase another process runs is deferred;
        # second pass: those, waiting for it.
        deferred = []
        for trial in todo:
            bar.set_postfix_str(f"running {trial.trial_id}")
            outcome = runner.run_trial(trial.trial_dir, study.phases, trial.configs(),
                                       _content(trial, share_phases), debug=debug,
                                       on_finished=on_finished,
                                       shared=_shared(trial, share_phases), wait=False)
            if outcome == runner.DEFERRED:
                deferred.append(trial)
            else:
                done(trial, outcome)
        for trial in deferred:
            bar.set_postfix_str(f"waiting for a shared phase of {trial.trial_id}")
            done(trial, runner.run_trial(trial.trial_dir, study.phases, trial.configs(),
                                         _content(trial, share_phases), debug=debug,
                                         on_finished=on_finished,
                                         shared=_shared(trial, share_phases)))
    else:
        for trial in todo:
            os.makedirs(trial.trial_dir, exist_ok=True)
            runner.write_trial_json(trial.trial_dir, _content(trial, share_phases))
        runner.run_parallel([t.trial_dir for t in todo], parallel, worker_command,
                            lambda folder, outcome: done(by_dir[folder], outcome))
    return outcomes


def _shared(trial: grid.Trial, share_phases: bool) -> dict:
    return {p: trial.shared_dir(p) for p in trial.phases} if share_phases else {}


def _content(trial: grid.Trial, share_phases: bool) -> dict:
    """trial.json: its flags, and the shared work directories of its phases (none when
    sharing is off: a --parallel worker reads them from here)."""
    content = trial.to_dict()
    if not share_phases:
        content["shared"] = {}
    return content


RACE_POLL_S = 5.0  # A shard waiting for other shards' trials of a round looks again.


def _run_race(study, study_dir, trials, options: StudyOptions, worker_command) -> dict:
    """Round after round: this shard's trials of the round first, then any other trial of
    the round no process holds (so one shard alone finishes the race), then, while
    other processes run the rest, waits; the state is recomputed from disk (and the
    decided rounds of race.json) each time."""
    from tapefit.research import race as race_lib
    shard, parallel, debug = options.shard, options.parallel, options.debug
    progress, share_phases, select_by = options.progress, options.share_phases, \
        options.select_by
    higher = _higher_is_better(select_by)

    def compute(retry_failed=False):
        return race_lib.compute(study, study_dir, select_by, higher,
                                retry_failed=retry_failed)

    # --retry_failed: the rounds from the first drop for a failed trial are decided again.
    state = compute(options.retry_failed)
    check_trials(study, trials, state.pending)  # Before anything is written.
    os.makedirs(os.path.join(study_dir, paths.TRIALS_DIR), exist_ok=True)
    save(study, study_dir, options)
    _index_runs(study, study_dir)
    race_lib.write(study, study_dir, state)
    outcomes = {}
    bar = _bar(len(trials), 0, progress)

    def write_report():
        current = compute()
        race_lib.write(study, study_dir, current)
        _write_report(study, study_dir, current.scheduled, select_by, flips=False)

    while not state.finished:
        in_round = [t for t in state.scheduled if t.seed in state.seeds
                    and t.config_index in state.alive]
        mine = set(grid.shard(in_round, *shard))
        todo = ([t for t in state.pending if t in mine]
                + [t for t in state.pending if t not in mine])
        check_trials(study, [], todo)
        bar.total = len(state.scheduled)
        bar.n = len(state.scheduled) - len(state.pending)
        bar.set_description(f"race round {state.round}")
        result = _run_trials(study, todo, parallel, debug, worker_command, share_phases,
                             bar, write_report)
        outcomes.update(result)
        before = state
        state = compute()
        if not state.finished and state.round == before.round and \
                {t.trial_id for t in state.pending} == {t.trial_id for t in before.pending}:
            time.sleep(RACE_POLL_S)  # Every trial left runs elsewhere: wait for them.
    bar.close()
    race_lib.write(study, study_dir, state)
    for trial in state.scheduled:
        outcomes.setdefault(trial.trial_id, trial_files.state(trial.trial_dir, study.phases))
    _write_report(study, study_dir, state.scheduled, select_by)
    return outcomes


def _higher_is_better(select_by: str) -> bool:
    table = getattr(report, "SELECT_BY", {"val_accuracy": True, "val_loss": False})
    if select_by not in table:
        raise ConfigError(f"unknown --select_by={select_by!r}; choose one of: "
                          f"{', '.join(table)}")
    return table[select_by]


def _write_report(study, study_dir, trials, select_by, flips: bool = True):
    import inspect
    if "select_by" in inspect.signature(report.write).parameters:
        return report.write(study, study_dir, trials, select_by=select_by, flips=flips)
    return report.write(study, study_dir, trials)


def race_state(study: grid.Study, study_dir: str, select_by: str = "val_accuracy"):
    """For --report_only: the race recomputed from disk, race.json rewritten; the trials
    it scheduled (the report's rows)."""
    from tapefit.research import race as race_lib
    state = race_lib.compute(study, study_dir, select_by, _higher_is_better(select_by))
    race_lib.write(study, study_dir, state)
    return state.scheduled


def _bar(total, initial, enabled, stream=None):
    """The progress over the trials on stderr: tqdm's bar on a terminal; elsewhere (a
    redirected log) `TrialLines`, one plain line per finished trial, no carriage
    returns."""
    from tqdm import tqdm

    from tapefit.flags.quiet import stderr_is_terminal
    from tapefit.loops.console import is_interactive
    terminal = stderr_is_terminal() if stream is None else is_interactive(stream)
    stream = sys.stderr if stream is None else stream
    if enabled and not terminal:
        return TrialLines(total, initial, stream)
    return tqdm(total=total, initial=initial, unit="trial", desc="sweep", file=stream,
                disable=not enabled, dynamic_ncols=True)


class TrialLines:
    """What `_run_trials` asks of tqdm's bar, as plain lines for a log that is not a
    terminal: `sweep: 3/4 trials; <trial_id>: finished` when a trial ends (`update`,
    after `set_postfix_str` names it), messages (`write`) as they are; what is running
    meanwhile is not said (a log keeps every line, a terminal only the last)."""

    def __init__(self, total, initial, stream):
        self.total, self.n, self.desc, self.postfix = total, initial, "sweep", ""
        self._stream = stream

    def set_description(self, desc):
        self.desc = desc

    def set_postfix_str(self, text):
        self.postfix = text

    def update(self, count=1):
        self.n += count
        self._print(f"{self.desc}: {self.n}/{self.total} trials; {self.postfix}")

    def write(self, text, file=None):
        self._print(text, file)

    def close(self):
        pass

    def _print(self, text, file=None):
        stream = self._stream if file is None else file
        print(text, file=stream, flush=True)


def run_one(trial_dir: str, debug: bool = False) -> str:
    """A worker process's job (--run_trial): the trial described by its trial.json."""
    phases, configs = runner.configs_from_trial_json(trial_dir)
    content = read_json_or_none(os.path.join(trial_dir, paths.TRIAL_JSON))
    shared = content.get("shared") if isinstance(content, dict) else None
    return runner.run_trial(trial_dir, phases, configs, content, debug=debug,
                            on_finished=hparams_on_finished(_study_of(trial_dir)),
                            shared=shared if isinstance(shared, dict) else None)


def _study_of(trial_dir: str):
    study_dir = os.path.dirname(os.path.dirname(os.path.abspath(trial_dir)))
    try:
        return load(study_dir)
    except ConfigError:
        return None
