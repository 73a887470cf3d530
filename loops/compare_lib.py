"""Runs one phase through both loops and reports how far apart they end up.

Writes `<workdir>/<phase>/{custom,fit}/` (each a complete run directory, their
TensorBoard logs side by side), `report.json`, `report.md` and `curves.png`.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from tapefit.flags.config import DEFAULT_TOLERANCE, LOOPS, Config, check_number
from tapefit.flags.errors import ConfigError
from tapefit.layout.atomic import atomic_write_json
from tapefit.layout.paths import BEST_WEIGHTS, CURVES_PNG, REPORT_JSON, REPORT_MD, phase_dir
from tapefit.loops import phases
from tapefit.loops.training.strategy import is_chief

TRAINED_PHASES = ("head", "finetune")


class _Recorder:
    """Collects initial weights, per-epoch logs and epoch wall times of one run."""

    def __init__(self):
        self.initial_weights = None
        self.epoch_logs = []
        self.epoch_seconds = []
        self._start = None

    def hooks(self, module):
        """A LambdaCallback from `module` (ours or keras.callbacks) feeding this recorder."""
        self._hook = module.LambdaCallback(
            on_train_begin=self._train_begin, on_epoch_begin=self._epoch_begin,
            on_epoch_end=self._epoch_end)
        return [self._hook]

    def _train_begin(self, logs=None):
        self.initial_weights = self._hook.model.get_weights()

    def _epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def _epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._start)
        self.epoch_logs.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})


def _max_abs(a, b):
    return max((float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(a, b)),
               default=0.0)


def _rel(diff, reference):
    return float(diff / max(reference, float(np.finfo(np.float32).tiny)))


def head_checkpoint(workdir: str) -> str:
    """The head weights a finetune comparison starts from (train.py's or compare.py's)."""
    for path in (os.path.join(phase_dir(workdir, "head"), BEST_WEIGHTS),
                 os.path.join(phase_dir(workdir, "head"), "custom", BEST_WEIGHTS)):
        if os.path.isfile(path):
            return path
    return os.path.join(phase_dir(workdir, "head"), BEST_WEIGHTS)  # init_checkpoint() names it.


def check_arguments(cfg: Config, tolerance) -> None:
    """What compare.py can compare, checked before anything runs: a training phase
    (head or finetune) and a tolerance that is a number in `RANGES["tolerance"]`."""
    if cfg.phase not in TRAINED_PHASES:
        raise ConfigError(f"compare.py trains a phase through both loops, and "
                          f"--phase={cfg.phase} trains nothing that is kept; pass "
                          f"--phase=head or --phase=finetune")
    check_number("tolerance", tolerance)


def compare(cfg: Config, tolerance: float = DEFAULT_TOLERANCE, fit_changes=None) -> dict:
    """Trains cfg.phase with both loops; returns the report (also written to disk).

    `fit_changes` (Config fields) makes the fit run deliberately different, to
    check that the comparison can tell.
    """
    check_arguments(cfg, tolerance)
    if cfg.phase == "finetune" and not cfg.init_checkpoint:
        cfg = cfg.replace(init_checkpoint=head_checkpoint(cfg.workdir))
    if cfg.feature_cache == "auto":
        # Cached features come from batches of another size than fit's, so they
        # agree with fit only up to float rounding: off unless asked for.
        cfg = cfg.replace(feature_cache="off")
    runs = {}
    for loop in LOOPS:
        recorder = _Recorder()
        run_cfg = cfg.replace(loop=loop, **(fit_changes or {} if loop == "fit" else {}))
        model = phases.train(run_cfg, run_dir=os.path.join(cfg.run_dir, loop),
                             extra_hooks=recorder.hooks).model
        runs[loop] = (model, recorder)
    report = build_report(cfg, runs, tolerance)
    if not is_chief(cfg.strategy):
        return report  # Only the chief of a multi-worker job writes the run directory.
    atomic_write_json(os.path.join(cfg.run_dir, REPORT_JSON), report)
    with open(os.path.join(cfg.run_dir, REPORT_MD), "w") as f:
        f.write(render_markdown(report))
    plot_curves(report, os.path.join(cfg.run_dir, CURVES_PNG))
    return report


def build_report(cfg: Config, runs: dict, tolerance: float) -> dict:
    (custom_model, custom), (fit_model, fit) = runs["custom"], runs["fit"]
    layers = []
    for c_var, f_var in zip(custom_model.weights, fit_model.weights):
        c, f = np.asarray(c_var.numpy()), np.asarray(f_var.numpy())
        diff = float(np.max(np.abs(c - f))) if c.size else 0.0
        layers.append({"name": c_var.path, "max_abs_diff": diff,
                       "max_rel_diff": _rel(diff, float(np.max(np.abs(f))) if f.size else 0.0)})
    metric_diffs, metric_rel = [], []
    same_epochs = len(custom.epoch_logs) == len(fit.epoch_logs)
    for c_logs, f_logs in zip(custom.epoch_logs, fit.epoch_logs):
        for key in sorted(set(c_logs) | set(f_logs)):
            a, b = c_logs.get(key, math.nan), f_logs.get(key, math.nan)
            d = 0.0 if (a == b or (math.isnan(a) and math.isnan(b))) else abs(a - b)
            metric_diffs.append(d)
            metric_rel.append(_rel(d, abs(b)) if not math.isnan(d) else math.inf)
    max_metric = max(metric_diffs, default=0.0) if same_epochs else math.inf
    max_metric_rel = max(metric_rel, default=0.0) if same_epochs else math.inf
    max_weight = max((l["max_abs_diff"] for l in layers), default=0.0)
    max_weight_rel = max((l["max_rel_diff"] for l in layers), default=0.0)
    initial_diff = _max_abs(custom.initial_weights, fit.initial_weights)
    if cfg.deterministic and cfg.feature_cache == "off":
        criterion = "exact equality of weights and of every logged metric (--deterministic)"
        equal = max_weight == 0.0 and max_metric == 0.0 and initial_diff == 0.0
    else:
        criterion = f"relative difference <= {tolerance:g} for weights and logged metrics"
        equal = (max_weight_rel <= tolerance and max_metric_rel <= tolerance
                 and initial_diff == 0.0)
    return {
        "phase": cfg.phase, "deterministic": cfg.deterministic, "criterion": criterion,
        "tolerance": 0.0 if "exact" in criterion else tolerance, "equal": bool(equal),
        "initial_max_abs_weight_diff": initial_diff,
        "max_abs_weight_diff": max_weight, "max_rel_weight_diff": max_weight_rel,
        "max_abs_metric_diff": max_metric, "max_rel_metric_diff": max_metric_rel,
        "epochs": {"custom": len(custom.epoch_logs), "fit": len(fit.epoch_logs)},
        "layers": layers,
        "logs": {"custom": custom.epoch_logs, "fit": fit.epoch_logs},
        "seconds_per_epoch": {"custom": custom.epoch_seconds, "fit": fit.epoch_seconds},
        "config": cfg.to_dict(),
    }


def render_markdown(report: dict) -> str:
    verdict = "EQUAL" if report["equal"] else "DIFFERENT"
    lines = [
        f"# custom loop vs fit(): {report['phase']} phase — {verdict}", "",
        f"Criterion: {report['criterion']}.", "",
        "| quantity | value |", "|---|---|",
        f"| max abs weight diff | {report['max_abs_weight_diff']:.3g} |",
        f"| max rel weight diff | {report['max_rel_weight_diff']:.3g} |",
        f"| max abs metric diff | {report['max_abs_metric_diff']:.3g} |",
        f"| initial weights diff | {report['initial_max_abs_weight_diff']:.3g} |",
        f"| epochs (custom / fit) | {report['epochs']['custom']} / {report['epochs']['fit']} |",
        "", "## Per epoch", "",
        "| epoch | loop | loss | accuracy | val_loss | val_accuracy | learning_rate | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for loop in LOOPS:
        for logs, seconds in zip(report["logs"][loop], report["seconds_per_epoch"][loop]):
            cells = [f"{logs.get(k, math.nan):.6g}" for k in
                     ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")]
            lines.append(f"| {logs['epoch'] + 1} | {loop} | " + " | ".join(cells)
                         + f" | {seconds:.2f} |")
    lines += ["", "## Layers with a difference", ""]
    differing = [l for l in report["layers"] if l["max_abs_diff"] > 0]
    lines += [f"- `{l['name']}`: {l['max_abs_diff']:.3g} (rel {l['max_rel_diff']:.3g})"
              for l in differing] or ["none"]
    return "\n".join(lines) + "\n"


def plot_curves(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for loop, style in zip(LOOPS, ("-", "--")):
            logs = report["logs"][loop]
            epochs = [l["epoch"] + 1 for l in logs]
            for key in (metric, f"val_{metric}"):
                ax.plot(epochs, [l.get(key, math.nan) for l in logs], style, marker="o",
                        label=f"{loop} {key}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    verdict = "equal" if report["equal"] else "different"
    fig.suptitle(f"{report['phase']}: custom vs fit ({verdict})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
