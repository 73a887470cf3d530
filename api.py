"""tapefit from Python (a notebook, a script): the command line's resolver and phases,
results as objects, the same files on disk as `tapefit train` / `predict` / `sweep` write.

    import tapefit

    flags = dict(workdir="runs/pets", data_dir="photos", backbone="mobilenet", alpha=0.25)
    head = tapefit.head(**flags)                        # = tapefit train --phase=head ...
    head.summary["best_value"], head.history[-1]["val_accuracy"], head.model
    tapefit.finetune(**flags)                           # = tapefit train --phase=finetune
    tapefit.evaluate(**flags).metrics["accuracy"]       # = tapefit train --phase=evaluate
    tapefit.classify("runs/pets", ["cat.jpg", "more_photos/"])[0].label  # = tapefit predict
    study = tapefit.study("runs/study", axes=["learning_rate=1e-3,3e-3"], seeds=[0, 1, 2],
                          phases="head,evaluate", data_dir="photos")    # = tapefit sweep
    print(study.markdown)

The names differ from the commands' (`train`, `predict`, `sweep`) because those are the
modules `tapefit.train`, ... of the commands themselves. `tapefit.run(cfg)` runs the phase
a `Config` names.

Every keyword is a `tapefit train` flag (`tapefit.config` resolves them exactly as the
command line does: the `--recipe` sets the flags not given, then every check). A misspelt
or wrong-typed one is a `tapefit.ConfigError` ("did you mean ..."); every user error is a
`tapefit.TapefitError` with the one line the command line prints.
"""
from __future__ import annotations

import csv
import dataclasses
import os

from tapefit.flags.config import Config, resolve
from tapefit.flags.errors import ConfigError

# TensorFlow's native INFO/WARNING lines, as the commands silence them (flags/quiet.py),
# unless the caller set the level or loaded TensorFlow already.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["config", "run", "head", "finetune", "evaluate", "lr_find", "classify",
           "load_model", "study", "Result", "Study"]


def config(**flags) -> Config:
    """The `Config` the command line `tapefit train --NAME=VALUE ...` resolves to: the
    keywords are the flags given; the `--recipe` sets the ones it names that are not."""
    return resolve(flags)


@dataclasses.dataclass
class Result:
    """One phase run. `summary`: what `<workdir>/<phase>/summary.json` holds (and `tapefit
    train --json` prints); `model`: the trained Keras model (head, finetune: the weights
    training ended with, as `final.weights.h5`; None for evaluate and lr_find, see
    `load_model`); `logs`: the last epoch's logs (training) or the test metrics."""
    config: Config
    summary: dict
    model: object = None
    logs: dict | None = None

    @property
    def run_dir(self) -> str:
        return self.config.run_dir

    @property
    def metrics(self) -> dict:
        """The numbers: the last epoch's logs (head, finetune), the test metrics
        (evaluate: loss, accuracy)."""
        return dict(self.logs or {})

    @property
    def history(self) -> list[dict]:
        """The phase's log.csv: one dict per epoch (numbers as floats); [] without it."""
        from tapefit.layout.paths import LOG_CSV
        path = os.path.join(self.run_dir, LOG_CSV)
        if not os.path.isfile(path):
            return []
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text):
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return text


def _phase_config(cfg: Config | None, flags: dict, phase: str | None) -> Config:
    if cfg is not None and flags:
        raise ConfigError("pass a Config or flags as keywords, not both (Config.replace "
                          "changes a Config)")
    if cfg is None:
        if phase is not None:
            flags.setdefault("phase", phase)
        return resolve(flags)
    if not isinstance(cfg, Config):
        raise ConfigError(f"expected a tapefit Config, got {type(cfg).__name__}; build one "
                          "with tapefit.config(...)")
    return cfg


def run(cfg: Config, /) -> Result:
    """The phase a `Config` names (`tapefit.config(...)` builds one), as `tapefit train`
    runs it: the same checks, the same files in `<workdir>/<phase>/`."""
    cfg = _phase_config(cfg, {}, None)
    if cfg.phase not in ("head", "finetune"):
        return _run_other(cfg)
    from tapefit.loops import phases
    with phases.disk_errors(cfg):
        trained = phases.train(cfg)
    return Result(cfg, trained.summary, trained.model, trained.logs)


def head(cfg: Config | None = None, /, **flags) -> Result:
    """`tapefit train --phase=head` with these flags: a new head on the frozen backbone."""
    return _run_phase("head", cfg, flags)


def finetune(cfg: Config | None = None, /, **flags) -> Result:
    """`tapefit train --phase=finetune`: from the head's best weights, the top of the
    backbone unfrozen (`unfreeze_from`), a lower rate, a fresh optimizer."""
    return _run_phase("finetune", cfg, flags)


def evaluate(cfg: Config | None = None, /, **flags) -> Result:
    """`tapefit train --phase=evaluate`: the newest trained phase of `workdir` on the test
    split (or the data the flags name); writes `<workdir>/evaluate/`."""
    return _run_phase("evaluate", cfg, flags)


def lr_find(cfg: Config | None = None, /, **flags) -> Result:
    """`tapefit train --phase=lr_find`: the learning-rate finder for `for_phase`."""
    return _run_phase("lr_find", cfg, flags)


def _run_phase(phase: str, cfg, flags) -> Result:
    cfg = _phase_config(cfg, flags, phase)
    if cfg.phase != phase:
        raise ConfigError(f"tapefit.{phase} runs --phase={phase}, not --phase={cfg.phase}; "
                          f"call tapefit.{cfg.phase} or tapefit.run")
    return run(cfg)


def _run_other(cfg: Config) -> Result:
    from tapefit.loops import phases
    summary = phases.run(cfg)
    logs = ({k: v for k, v in summary.items() if isinstance(v, float)}
            if cfg.phase == "evaluate" else None)
    return Result(cfg, summary, None, logs)


def classify(workdir: str, images) -> list:
    """`tapefit predict --workdir=WORKDIR IMAGES...`: a `Prediction` (path, label,
    probability, probabilities by class) per image file, and per image file under each
    folder (unreadable files under a folder are skipped, as the command skips them)."""
    from tapefit.loops.classify import classify
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    return list(classify(str(workdir), [str(i) for i in images]))


def load_model(workdir: str):
    """The model `evaluate` and `predict` score (the newest trained phase's weights) and
    its class names: `(keras.Model, [class names])`."""
    from tapefit.loops import train_lib
    model, _cfg, class_names, *_ = train_lib.load_trained(str(workdir))
    return model, class_names


@dataclasses.dataclass
class Study:
    """A study's outcome: `markdown` is `<workdir>/results.md` (the report), `rows` its
    `results.csv` (a dict per configuration), `outcomes` {trial_id: outcome} of the
    trials this call ran or found."""
    workdir: str
    outcomes: dict
    markdown: str
    rows: list
    line: str  # What `tapefit sweep` ends with.


def study(workdir: str, axes=(), seeds=None, phases=None, baseline=None, sweep_file=None,
          race: bool = False, min_seeds: int = 3, max_seeds: int | None = None,
          race_alpha: float = 0.05, parallel: int = 1, select_by: str = "val_accuracy",
          share_phases: bool = True, retry_failed: bool = False, progress: bool = False,
          flips=(), **flags) -> Study:
    """`tapefit sweep --workdir=WORKDIR --axis=A ... --seeds=...` with the `tapefit train`
    flags of every trial as keywords (the base configuration). `axes`: strings as
    `--axis` takes them; `seeds`: a list or "0,1,2". Re-running resumes, as the command."""
    from tapefit.flags.config import RANGES, check_number
    from tapefit.research import report
    from tapefit.research import study as study_lib
    for name, use in (("phase", "phases="), ("seed", "seeds="), ("workdir", "the first "
                                                                           "argument")):
        if name in flags:
            raise ConfigError(f"tapefit.study does not take {name}=; pass {use}")
    if select_by not in ("val_accuracy", "val_loss"):
        raise ConfigError(f"unknown select_by={select_by!r}; choose one of: val_accuracy, "
                          "val_loss")
    for name, value in (("parallel", parallel), ("min_seeds", min_seeds),
                        ("race_alpha", race_alpha), ("max_seeds", max_seeds)):
        if name in RANGES and value is not None:
            check_number(name, value, "float" if name == "race_alpha" else "int")
    Config(**flags)  # The flags' names and types, checked before anything is written.
    if isinstance(axes, str):
        axes = [axes]
    if seeds is not None and not isinstance(seeds, str):
        seeds = ",".join(str(s) for s in seeds)
    from tapefit.research.options import from_keywords
    workdir = str(workdir)
    # The study's settings (select_by, the race's) stored in its sweep.json win over
    # keywords left at their defaults; a keyword that differs from them is one line.
    options = from_keywords(select_by=select_by, race=race, min_seeds=min_seeds,
                            max_seeds=max_seeds, race_alpha=race_alpha, parallel=parallel,
                            share_phases=share_phases, retry_failed=retry_failed,
                            progress=progress,
                            flips=(flips,) if isinstance(flips, str) else tuple(flips))
    spec, options = study_lib.prepare(workdir, flags, options, phases=phases, axes=list(axes),
                                      seeds=seeds, baseline=baseline, sweep_file=sweep_file)
    outcomes = study_lib.execute(spec, workdir, options)
    with open(os.path.join(workdir, report.RESULTS_MD), encoding="utf-8") as f:
        markdown = f.read()
    with open(os.path.join(workdir, report.RESULTS_CSV), newline="", encoding="utf-8") as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return Study(workdir, outcomes, markdown, rows,
                 study_lib.outcome_line(spec, workdir, (0, 1), outcomes))
