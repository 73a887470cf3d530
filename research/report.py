"""The study's report, from what is on disk: `results.csv` (one row per trial),
`results.md` (one row per configuration, with intervals and paired differences to
the baseline) and `results.png`. Any process may rewrite it at any time (atomic
writes): every shard of a study reads every trial directory.

Metrics of a trial:
- `test_accuracy`, `test_loss`: the evaluate phase (best weights, test split);
- per trained phase: best (over epochs) and final validation accuracy and loss;
- `val_loss`: the best validation loss of the last trained phase (the epoch whose
  weights `best.weights.h5` holds with the default --monitor=val_loss);
- `val_accuracy`: the last trained phase's final validation accuracy.
The primary metric is test accuracy when the study evaluates, else `val_accuracy`.
"""
from __future__ import annotations

import csv
import io
import math
import os

from research import grid, runner, stats
from research.files import atomic_save, atomic_write_text

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
TRAINED = ("head", "finetune")
PHASE_METRICS = ("epochs", "best_val_accuracy", "best_val_loss", "final_val_accuracy",
                 "final_val_loss")


# ---- one trial ------------------------------------------------------------------------------

def collect(trial: grid.Trial) -> dict:
    """Everything the report shows of one trial, read from its directory."""
    row = {"trial_id": trial.trial_id, "group_id": trial.group_id, "seed": trial.seed}
    row.update({name: grid.format_value(value) for name, value in trial.assignment})
    row.update(trial_metrics(trial.trial_dir, trial.phases))
    return row


def trial_metrics(folder: str, phases) -> dict:
    """Status and metrics of the trial in `folder` (see the module docstring)."""
    status = runner.read_status(folder) or {}
    outcome = runner.state(folder, phases)
    if outcome == runner.PENDING and os.path.isfile(os.path.join(folder, runner.TRIAL_JSON)):
        outcome = "unfinished"
    row = {"status": outcome, "reason": status.get("reason", "") if outcome == "failed" else "",
           "wall_s": sum(status.get("wall_s", {}).values()) if status else math.nan,
           "val_loss": math.nan, "val_accuracy": math.nan}
    curve = []
    for phase in TRAINED:
        rows = runner.read_log(os.path.join(folder, phase, "log.csv"))
        val_acc = [r.get("val_accuracy", math.nan) for r in rows]
        val_loss = [r.get("val_loss", math.nan) for r in rows]
        row[f"{phase}_epochs"] = len(rows) if phase in phases else ""
        row[f"{phase}_best_val_accuracy"] = _best(val_acc, max)
        row[f"{phase}_best_val_loss"] = _best(val_loss, min)
        row[f"{phase}_final_val_accuracy"] = val_acc[-1] if val_acc else math.nan
        row[f"{phase}_final_val_loss"] = val_loss[-1] if val_loss else math.nan
        curve += [(phase, loss) for loss in val_loss]
        if phase in phases:
            row["val_loss"] = row[f"{phase}_best_val_loss"]
            row["val_accuracy"] = row[f"{phase}_final_val_accuracy"]
    evaluation = runner.read_json(os.path.join(folder, "evaluate", runner.EVALUATION_JSON)) or {}
    row["test_accuracy"] = float(evaluation.get("accuracy", math.nan))
    row["test_loss"] = float(evaluation.get("loss", math.nan))
    row["test_examples"] = evaluation.get("test_examples", "")
    row["_curve"] = curve
    return row


def _best(values, pick):
    finite = [v for v in values if math.isfinite(v)]
    return pick(finite) if finite else math.nan


# ---- per configuration ------------------------------------------------------------------------

def primary_metric(study: grid.Study) -> tuple[str, str]:
    if "evaluate" in study.phases:
        return "test_accuracy", "test accuracy"
    return "val_accuracy", "validation accuracy"


def label(assignment, study: grid.Study | None = None) -> str:
    """`name=value, ...` of the axes with more than one value (one-value axes are constants)."""
    varying = None if study is None else {n for a in study.axes if len(a.values) > 1
                                          for n in a.names}
    varying = varying or None  # No axis varies: name them all.
    return ", ".join(f"{n}={grid.format_value(v)}" for n, v in assignment
                     if varying is None or n in varying) or "(base flags)"


def summarize(study: grid.Study, rows: list[dict]) -> list[dict]:
    """One entry per configuration, grid order: stats of the finished trials' metrics and
    the paired difference to the baseline over the seeds both finished."""
    metric, _ = primary_metric(study)
    configs = grid.configurations(study)
    base_key = grid.baseline_assignment(study)
    by_config = {i: {} for i in range(len(configs))}
    groups = {}
    for row, index in rows:
        groups.setdefault(index, row["group_id"])
        if row["status"] == runner.FINISHED:
            by_config[index][row["seed"]] = row
    base_index = configs.index(base_key)
    out = []
    for index, assignment in enumerate(configs):
        done = by_config[index]
        entry = {"index": index, "label": label(assignment, study),
                 "group_id": groups.get(index, ""),
                 "baseline": index == base_index, "seeds": sorted(done)}
        for name in (metric, "val_loss"):
            values = {s: r[name] for s, r in done.items()}
            entry[name] = stats.summarize(list(values.values()))
            base_values = {s: r[name] for s, r in by_config[base_index].items()}
            entry[f"{name}_paired"] = stats.paired(values, base_values)
            entry[f"{name}_values"] = values
        entry["curves"] = [r["_curve"] for r in done.values()]
        out.append(entry)
    return out


def best_and_runner_up(entries, metric):
    ranked = sorted((e for e in entries if e[metric].n), key=lambda e: -e[metric].mean)
    return (ranked[0] if ranked else None), (ranked[1] if len(ranked) > 1 else None)


# ---- files ---------------------------------------------------------------------------------------

def _fmt(x, digits=4):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _signed(x, digits=4):
    return "–" if not math.isfinite(x) else f"{x:+.{digits}f}"


def _interval(low, high, digits=4, signed=False):
    if not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    f = _signed if signed else _fmt
    return f"[{f(low, digits)}, {f(high, digits)}]"


def _p(p):
    return "–" if not math.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def markdown(study: grid.Study, study_dir: str, rows, entries) -> str:
    metric, metric_name = primary_metric(study)
    counts = {}
    for row, _ in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    best, runner_up = best_and_runner_up(entries, metric)
    base = next(e for e in entries if e["baseline"])
    lines = [f"# Sweep results: {study_dir}", "",
             f"{len(rows)} trials ({len(entries)} configurations × {len(study.seeds)} seeds "
             f"{', '.join(map(str, study.seeds))}; phases {', '.join(study.phases)}): "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
             "",
             f"Primary metric: **{metric_name}** (higher is better); also the best validation "
             "loss of the last trained phase. mean ± std over the finished seeds, 95 % "
             "Student-t interval of the mean; Δ: paired difference to the baseline "
             f"(**{base['label']}**) over the seeds both finished, its 95 % t interval and "
             "the paired t-test's two-sided p-value (scipy.stats).", ""]
    header = ["", "configuration", "n", f"{metric_name} mean ± std", "95 % CI",
              "Δ vs baseline [95 % CI]", "p", "val loss mean ± std", "95 % CI",
              "Δ val loss [95 % CI]", "p"]
    table = []
    for e in entries:
        s, d = e[metric], e[f"{metric}_paired"]
        v, dv = e["val_loss"], e["val_loss_paired"]
        mark = "★ best" if best is e else ("baseline" if e["baseline"] else "")
        if best is e and e["baseline"]:
            mark = "★ best, baseline"
        delta = "(baseline)" if e["baseline"] else (
            f"{_signed(d.mean)} {_interval(d.low, d.high, signed=True)} (n={d.n})" if d.n else "–")
        delta_v = "(baseline)" if e["baseline"] else (
            f"{_signed(dv.mean)} {_interval(dv.low, dv.high, signed=True)}" if dv.n else "–")
        table.append([mark, e["label"], str(s.n), f"{_fmt(s.mean)} ± {_fmt(s.std)}",
                      _interval(s.low, s.high), delta, "" if e["baseline"] else _p(d.p_value),
                      f"{_fmt(v.mean)} ± {_fmt(v.std)}", _interval(v.low, v.high), delta_v,
                      "" if e["baseline"] else _p(dv.p_value)])
    lines += [_md_table(header, table), ""]
    if best is not None and runner_up is not None and best[metric].overlaps(runner_up[metric]):
        lines += [f"**Warning:** the best configuration ({best['label']}) has a 95 % interval "
                  f"that overlaps the runner-up's ({runner_up['label']}): these seeds do not "
                  "separate them; look at the paired difference, or run more seeds.", ""]
    elif best is not None and runner_up is None:
        lines += ["Only one configuration has finished trials: nothing to compare yet.", ""]
    failed = [r for r, _ in rows if r["status"] == runner.FAILED]
    if failed:
        lines += ["## Failed trials", "",
                  _md_table(["trial", "reason"], [[r["trial_id"], r["reason"]] for r in failed]),
                  ""]
    other = [r for r, _ in rows if r["status"] not in (runner.FINISHED, runner.FAILED)]
    if other:
        lines += [f"Not finished yet: {', '.join(r['trial_id'] for r in other)}.", ""]
    return "\n".join(lines)


def _md_table(header, rows) -> str:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header] + rows]
    out = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(out)


def csv_text(study: grid.Study, rows) -> str:
    names = [n for a in study.axes for n in a.names]
    columns = (["trial_id", "group_id", *names, "seed", "status", "reason"]
               + [f"{p}_{m}" for p in TRAINED for m in PHASE_METRICS]
               + ["test_accuracy", "test_loss", "test_examples", "wall_s"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row, _ in rows:
        writer.writerow({k: (_fmt(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def plot(study: grid.Study, entries, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric, metric_name = primary_metric(study)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for x, e in enumerate(entries):
        color = colors[x % len(colors)]
        values = e[f"{metric}_values"]
        seeds = sorted(values)
        jitter = np.linspace(-0.2, 0.0, len(seeds)) if len(seeds) > 1 else [-0.1] * len(seeds)
        if seeds:
            left.scatter([x + j for j in jitter], [values[s] for s in seeds], color=color,
                         alpha=0.6, s=18, zorder=3)
        s = e[metric]
        if s.n:
            if math.isfinite(s.low):
                left.errorbar([x + 0.12], [s.mean], yerr=[[s.mean - s.low], [s.high - s.mean]],
                              fmt="o", color=color, capsize=4, zorder=4)
            else:
                left.plot([x + 0.12], [s.mean], "o", color=color, zorder=4)
        curves = [[loss for _, loss in c] for c in e["curves"]]
        if curves:
            length = min(map(len, curves))
            if length:
                arr = np.asarray([c[:length] for c in curves], dtype=float)
                mean = arr.mean(axis=0)
                epochs = np.arange(1, length + 1)
                right.plot(epochs, mean, color=color, label=e["label"])
                if len(arr) > 1:
                    std = arr.std(axis=0, ddof=1)
                    right.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
                head_epochs = sum(1 for p, _ in e["curves"][0][:length] if p == "head")
                if 0 < head_epochs < length:
                    right.axvline(head_epochs + 0.5, color="gray", linestyle=":", linewidth=1)
    left.set_xlim(-0.6, len(entries) - 0.4)
    left.set_xticks(range(len(entries)))
    left.set_xticklabels([("* " if e["baseline"] else "") + e["label"] for e in entries],
                         rotation=20, ha="right", fontsize=8)
    left.set_ylabel(metric_name)
    left.set_title(f"{metric_name}: seeds (dots), mean and 95 % t interval (* baseline)",
                   fontsize=9)
    right.set_xlabel("epoch (head, then finetune)")
    right.set_ylabel("validation loss")
    right.set_title("mean validation loss over seeds, band: ± 1 std", fontsize=9)
    if any(e["curves"] for e in entries):
        right.legend(fontsize=7)
    fig.tight_layout()
    atomic_save(lambda tmp: fig.savefig(tmp, format="png", dpi=100), path)
    plt.close(fig)


def write(study: grid.Study, study_dir: str, trials=None) -> dict:
    """Rewrites results.csv, results.md and results.png; returns the paths and summaries."""
    trials = trials if trials is not None else grid.expand(study, study_dir)
    rows = [(collect(t), t.config_index) for t in trials]
    entries = summarize(study, rows)
    atomic_write_text(os.path.join(study_dir, RESULTS_CSV), csv_text(study, rows))
    text = markdown(study, study_dir, rows, entries)
    atomic_write_text(os.path.join(study_dir, RESULTS_MD), text + "\n")
    plot(study, entries, os.path.join(study_dir, RESULTS_PNG))
    return {"rows": [r for r, _ in rows], "entries": entries, "markdown": text}
