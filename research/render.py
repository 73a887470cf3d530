"""Rendering the study's report: results.md (`markdown`, `race_section`, `flips_section`)
and results.csv (`csv_text`) from the entries research/verdicts.py decided."""
from __future__ import annotations

import csv
import io
import math
import os

from tapefit.layout import paths
from tapefit.layout.atomic import read_json_or_none
from tapefit.research import grid, stats, trial_files
from tapefit.research.collect import DAMAGED, PHASE_METRICS, TRAINED, read_predictions
from tapefit.research.verdicts import DEFAULT_SELECT_BY, NAMES, SELECT_BY, report_metric

CAUTION = "†"

# ---- files ---------------------------------------------------------------------------------------

def _fmt(x, digits=4):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _signed(x, digits=4):
    return "–" if not math.isfinite(x) else f"{x:+.{digits}f}"


def _interval(low, high, digits=4, signed=False, n=None):
    if not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    f = _signed if signed else _fmt
    caution = CAUTION if n is not None and n < stats.MIN_SEEDS else ""
    return f"[{f(low, digits)}, {f(high, digits)}]{caution}"


def _p(p):
    if p is None or not math.isfinite(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _mean_std(s: stats.Summary) -> str:
    return f"{_fmt(s.mean)} ± {_fmt(s.std)}" if s.n else "–"


def markdown(study: grid.Study, study_dir: str, rows, entries,
             select_by: str = DEFAULT_SELECT_BY, alpha: float = stats.ALPHA) -> str:
    metric, metric_name = report_metric(study, select_by)
    higher = SELECT_BY[select_by]
    select_name = NAMES[select_by]
    counts = {}
    for row, _ in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    base = next(e for e in entries if e["baseline"])
    top = next((e for e in entries if e["top"]), None)
    rule = entries[0].get("best_rule") or {"level": alpha, "configurations": len(entries)}
    lines = [f"# Sweep results: {study_dir}", "",
             f"{len(rows)} trials ({len(entries)} configurations × {len(study.seeds)} seeds "
             f"{', '.join(map(str, study.seeds))}; phases {', '.join(study.phases)}): "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".", ""]

    # ---- selection, on validation
    lines += [f"## Selection: {select_name} ({'higher' if higher else 'lower'} is better)", "",
              f"The configuration with the best mean {select_name} (of the last trained "
              "phase, at the epoch whose weights the evaluate phase scores) is compared with "
              "every other one, paired by seed, by the exact sign-flip test over the seeds "
              f"(stats.best), each comparison at level 2α/k = {_level(rule['level'])} (k = "
              f"{rule['configurations']} configurations; the p shown is p × k/2, against "
              f"α = {alpha}); it is ★ best only when every other one is worse. The t "
              "interval is descriptive. Test numbers never choose.", ""]
    header = ["#", "", "configuration", "n", f"{select_name} mean ± std", "95 % CI",
              "Δ vs top [95 % t CI]", "p sign-flip (× k/2)", "verdict vs top"]
    table = []
    for e in entries:
        s = e[select_by]
        mark = ", ".join(m for m in ("★ best" if e.get("best") else
                                     "top mean" if e["top"] else "",
                                     "baseline" if e["baseline"] else "") if m)
        sel = e["select"]
        if e["top"]:
            delta, p, verdict = "(top)", "", ""
        elif sel is None:
            delta, p, verdict = "–", "–", "no finished trial"
        else:
            c = sel["paired"]
            delta = (f"{_signed(c.mean)} {_interval(c.low, c.high, signed=True, n=c.n)} "
                     f"(n={c.n})")
            p, verdict = _p(sel["p_holm"]), sel["verdict"]
        table.append([str(e["number"]), mark, e["label"],
                      str(s.n), _mean_std(s), _interval(s.low, s.high, n=s.n), delta, p,
                      verdict])
    lines += [_md_table(header, table), ""]
    lines += _selection_prose(entries, top, select_name) + [""]
    lines += _runner_up_prose(top, metric_name)

    # ---- against the baseline, on test (or validation)
    evaluated = metric == "test_accuracy"
    k_t = entries[0].get("holm_t", 0)
    k_b = entries[0].get("holm_boot", 0)
    k_x = entries[0].get("holm_exact", 0)
    replicates = entries[0].get("replicates", stats.BOOTSTRAP_REPLICATES)
    lines += [f"## {metric_name.capitalize()} against the baseline ({base['label']})", ""]
    if evaluated:
        lines += ["Reported for every configuration, never used to choose. The verdict: "
                  "the exact sign-flip test of the paired per-seed differences, "
                  f"Holm-adjusted over the {k_x} configurations compared (p sign-flip "
                  f"(Holm) ≤ α = {alpha}), and the two-level bootstrap's Holm p < α with "
                  "the same sign (stats.test_verdicts); the t columns are descriptive. "
                  "The bootstrap: the "
                  "paired difference in test accuracy by a two-level bootstrap (resample the "
                  "seeds, then the test examples, the same draws for both configurations; "
                  f"{replicates} replicates, seed {stats.BOOTSTRAP_SEED}; its figures "
                  "rounded to their Monte-Carlo error), "
                  "its 95 % percentile interval, its p-value (Holm-adjusted over the "
                  f"{k_b} configurations compared) and P(A > B), the chance that a run of "
                  "the configuration beats the same-seed run of the baseline on a test set "
                  "drawn like this one. Beside it: the seed-only paired t interval and "
                  f"p-value (Holm over {k_t}). With a handful of seeds the bootstrap's "
                  "seed level understates the seed-to-seed spread; the exact test does not."
                  + ("" if k_b else " No trial has a readable evaluate/predictions.npz: no "
                     "bootstrap, the verdict follows the sign-flip test."), ""]
    else:
        lines += [f"The study does not evaluate (no test split): these are {metric_name} "
                  "numbers, the same data that selects. The verdict: the exact sign-flip test over "
                  f"seeds, Holm-adjusted over the {k_x} configurations compared; the paired "
                  f"t columns (Holm over {k_t}) are descriptive.", ""]
    header = ["#", "configuration", "n", f"{metric_name} mean ± std", "95 % CI"]
    if evaluated:
        header += ["Δ bootstrap [95 % CI]", "P(A > B)", "p boot (Holm)"]
    header += ["Δ seed-only t [95 % CI]", "p t", "p t (Holm)", "p sign-flip (Holm)",
               "verdict vs baseline"]
    if evaluated:
        header += ["test loss mean ± std", "Δ test loss bootstrap [95 % CI]"]
    table = []
    for e in entries:
        s = e[metric]
        row = [str(e["number"]), e["label"],
               str(s.n), _mean_std(s), _interval(s.low, s.high, n=s.n)]
        vs = e["vs_base"]
        if e["baseline"]:
            row += (["(baseline)", "", ""] if evaluated else []) + ["(baseline)", "", "", "",
                                                                    ""]
            if evaluated:
                row += [_mean_std(e["test_loss"]), "(baseline)"]
            table.append(row)
            continue
        c = vs["paired"]
        boot = vs["bootstrap"] or {}
        if evaluated:
            acc = boot.get("accuracy")
            if acc is not None:
                r = acc
                row += [f"{_boot_interval(r)} (n={r.seeds}×{r.examples})",
                        f"{r.p_improvement:.2f}", _p(vs["bootstrap_p_holm"])]
            else:
                row += [f"– ({boot['problem']})" if "problem" in boot else "–", "–", "–"]
        row += [(f"{_signed(c.mean)} {_interval(c.low, c.high, signed=True, n=c.n)} (n={c.n})"
                 if c.n else "–"), _p(c.p_value), _p(vs["p_holm"]), _p(vs.get("p_exact_holm")),
                vs["verdict"]]
        if evaluated:
            loss = boot.get("loss")
            row += [_mean_std(e["test_loss"]),
                    f"{_signed(loss.mean)} "
                    f"{_interval(loss.low, loss.high, signed=True, n=loss.seeds)}"
                    if loss is not None else "–"]
        table.append(row)
    lines += [_md_table(header, table), ""]
    lines += _seeds_prose([e for e in entries if not e["baseline"]], metric_name)
    lines += ["Legend: – no value (no finished trial, fewer than 2 paired seeds for an interval "
              "or a p-value, or no readable predictions.npz for the bootstrap); "
              f"{CAUTION} fewer than {stats.MIN_SEEDS} seeds: an interval on 1 degree of "
              "freedom, not enough seeds to tell; p < 0.001 is written <0.001; \"equal on every "
              "seed\": every paired difference exactly 0 (the runs may still differ; only "
              "bitwise-equal predictions make them the same runs).", ""]

    failed = [r for r, _ in rows if r["status"] == trial_files.FAILED]
    if failed:
        lines += ["## Failed trials", "",
                  _md_table(["trial", "reason"], [[r["trial_id"], r["reason"]] for r in failed]),
                  ""]
    damaged = [r for r, _ in rows if r["status"] == DAMAGED]
    if damaged:
        lines += ["## Damaged trials (left out)", "",
                  _md_table(["trial", "status"], [[r["trial_id"], f"damaged: {r['reason']}"]
                                                  for r in damaged]), ""]
    ended = (trial_files.FINISHED, trial_files.FAILED, DAMAGED)
    other = [r for r, _ in rows if r["status"] not in ended]
    if other:
        lines += [f"Not finished yet: {', '.join(r['trial_id'] for r in other)}.", ""]
    if study.race is not None:  # research/race.py: rounds, drops, trial-epochs (race.json).
        lines += [race_section(study_dir)]
    return "\n".join(lines)


def race_section(study_dir: str) -> str:
    """The race's part of results.md from race.json ("" when the study is no race)."""
    path = os.path.join(study_dir, paths.RACE_JSON)
    content = read_json_or_none(path)
    if not isinstance(content, dict) or "rounds" not in content:
        return ""
    try:
        return _race_section(content)
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"## Race\n\n{path} is damaged; rerun the sweep.\n"


def _race_section(c: dict) -> str:
    epochs = c["trial_epochs"]
    lines = ["## Race", "",
             f"Seeds added in rounds ({c['min_seeds']} first, then one per round, at most "
             f"{c['max_seeds']}: {', '.join(map(str, c['seeds']))}); after each round every "
             f"configuration significantly worse than the round's best on **{c['metric']}** "
             + (f"(validation; the exact sign-flip test paired over the round's seeds at the "
                "round's level below, spent so that the whole race holds α = "
                f"{c['alpha']}) " if any("level" in r for r in c["rounds"]) else
                f"(validation; paired over the round's seeds, Holm-adjusted, α = {c['alpha']}) ")
             + "is dropped.", ""]
    if c["finished"]:
        outcome = (f"**Winner: {c['winner']}**" if c["winner"] else
                   f"Ended after the last seed with {len(c['alive'])} configurations left: "
                   + "; ".join(c["alive"]) + " (these seeds do not separate them)"
                   if c["alive"] else "Ended with no configuration left (all failed)")
        lines += [f"{outcome} after round {c['round']}.", ""]
    else:
        lines += [f"Running: round {c['round']} (seeds {', '.join(map(str, c['round_seeds']))}), "
                  f"{len(c['alive'])} configurations left, {len(c['pending'])} trials to go.", ""]
    lines += [f"Trial-epochs: {epochs['race']} spent of the full grid's {epochs['full_grid']} "
              f"({_percent(epochs['ratio'])}); trials: {c['trials']['scheduled']} of "
              f"{c['trials']['full_grid']}.", ""]
    rounds = c["rounds"]
    extra = [k for k in ("level", "joined", "in_race") if any(k in r for r in rounds)]
    rows = [[str(r["round"]), ", ".join(map(str, r["seeds"])), str(r["configurations"]),
             r.get("best") or "–", "; ".join(r["dropped"]) or "–"]
            + [_race_value(r.get(k)) for k in extra] for r in rounds]
    names = {"level": "level (per comparison)", "joined": "joined", "in_race": "in the race"}
    if rows:
        lines += [_md_table(["round", "seeds", "configurations", "best", "dropped"]
                            + [names[k] for k in extra], rows), ""]
    if c["dropped"]:
        lines += [_md_table(["dropped", "round", "seeds", "why"],
                            [[d["configuration"], str(d["round"]), str(d["seeds"]), d["reason"]]
                             for d in c["dropped"]]), ""]
    return "\n".join(lines)


def _race_value(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return _level(v)
    if isinstance(v, (list, tuple)):
        return "; ".join(map(str, v)) or "–"
    return str(v)


def _percent(x) -> str:
    return f"{100 * x:.0f} %" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _selection_prose(entries, top, select_name) -> list[str]:
    if top is None:
        return ["No configuration has a finished trial yet: nothing to select."]
    others = [e for e in entries if e["select"] is not None]
    if not others:
        return [f"Only one configuration ({top['label']}) has finished trials: nothing to "
                "compare yet."]
    if top.get("best"):
        return [f"**Best: {top['label']}**: better on {select_name} than every other "
                "configuration (exact sign-flip test over seeds, each at 2α/k)."]
    too_few = [e for e in others if e["select"]["verdict"] == stats.TOO_FEW]
    ties = [e for e in others if e["select"]["verdict"] == stats.TIE]
    open_ = [e for e in others if e["select"]["verdict"] == stats.NO_DIFFERENCE]
    text = [f"**No best configuration yet.** {top['label']} has the best mean {select_name}, "
            "but"]
    parts = []
    if too_few:
        parts.append(f"against {_names(too_few)} there are not enough seeds to tell "
                     f"(fewer than {stats.MIN_SEEDS} paired)")
    same = [e for e in ties if e["select"].get("identical")]
    equal = [e for e in ties if not e["select"].get("identical")]
    if same:
        parts.append(f"it ties exactly with {_names(same)}: identical predictions on every "
                     "seed (the same runs: more seeds cannot help)")
    if equal:
        parts.append(f"it ties exactly with {_names(equal)}: equal {select_name} on every "
                     "seed (the runs differ; these seeds do not separate them)")
    if open_:
        parts.append(f"these seeds do not separate it from {_names(open_)} (exact "
                     "sign-flip p above the rule's level)")
    out = " ".join(text) + " " + "; ".join(parts) + "."
    notes = []
    for e in too_few + open_:
        sel = e["select"]
        if sel.get("unreachable"):
            notes.append(f"against #{e['number']}: {sel['unreachable']}")
        needed = sel.get("seeds_needed", math.nan)
        if open_ and e in open_ and math.isfinite(needed):
            c = sel["paired"]
            notes.append(f"#{e['number']}: about {needed} seeds would detect its observed Δ "
                         f"{_signed(c.mean)} with 80 % power at level {_level(sel['level'])}"
                         )
    if notes:
        out += " " + "; ".join(n[0].upper() + n[1:] for n in notes) + "."
    return [out + " Read the comparisons below as unsettled."]


def _level(x) -> str:
    return f"{x:.3g}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _boot_interval(r: stats.Bootstrap) -> str:
    """A bootstrap difference and its interval to the decimals its Monte-Carlo SE supports."""
    se = r.mc_se
    caution = CAUTION if r.seeds < stats.MIN_SEEDS else ""
    if not (math.isfinite(r.low) and math.isfinite(r.high)):
        return stats.rounded(r.mean, se, signed=True)
    return (f"{stats.rounded(r.mean, se, signed=True)} [{stats.rounded(r.low, se, signed=True)}, "
            f"{stats.rounded(r.high, se, signed=True)}]{caution}")


def _runner_up_prose(top, metric_name) -> list[str]:
    """One sentence: the selected configuration against the runner-up on test."""
    ru = (top or {}).get("runner_up")
    if not ru:
        return []
    other, c, boot = ru["entry"], ru["paired"], ru["bootstrap"]
    if not c.n:
        return [f"The runner-up #{other['number']} {other['label']} has no seed paired with "
                f"the selected #{top['number']} {top['label']} on {metric_name}.", ""]
    if boot is not None:
        figure = (f"{_boot_interval(boot)} (two-level bootstrap, n={boot.seeds}×"
                  f"{boot.examples}; P(A > B) {boot.p_improvement:.2f})")
    else:
        figure = (f"{_signed(c.mean)} {_interval(c.low, c.high, signed=True, n=c.n)} (paired "
                  f"t, n={c.n})")
    return [f"Against the runner-up on {metric_name}: the selected #{top['number']} "
            f"{top['label']} differs from #{other['number']} {other['label']} by {figure}, "
            f"exact sign-flip p {_p(c.sign_flip_p)} (descriptive: {metric_name} never "
            "chooses).", ""]


def _seeds_prose(others, metric_name) -> list[str]:
    """How many seeds: one sentence per configuration the seeds do not separate from the
    baseline (80 % power at the rule's level), and when these seeds cannot reach it."""
    lines = []
    for e in others:
        vs = e["vs_base"]
        if vs is None:
            continue
        c = vs["paired"]
        if vs["verdict"] == stats.TIE:
            lines.append(f"#{e['number']} {e['label']}: " + (
                "identical predictions to the baseline on every seed: more seeds cannot help."
                if vs.get("identical") else
                f"equal {metric_name} on every seed, the predictions differ: no observed "
                "difference to size more seeds for."))
        elif vs["verdict"] in (stats.NO_DIFFERENCE, stats.TOO_FEW):
            parts = []
            needed = vs.get("seeds_needed", math.nan)
            if math.isfinite(needed):
                parts.append(f"about {needed} seeds would detect its observed Δ "
                             f"{_signed(c.mean)} with 80 % power (exact sign-flip test at "
                             f"{_level(vs['level'])}, the study's own seed-to-seed spread)")
            if vs.get("unreachable"):
                parts.append(vs["unreachable"])
            if parts:
                lines.append(f"#{e['number']} {e['label']}: no difference shown; "
                             + "; ".join(parts) + ".")
    if not lines:
        return []
    return ["How many seeds: " + " ".join(lines), ""]


def _names(entries) -> str:
    return ", ".join(f"#{e['number']} {e['label']}" for e in entries)


def _md_table(header, rows) -> str:
    esc = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in [header] + rows]
    out = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(out)


# ---- results.csv ----------------------------------------------------------------------------

NUMERIC_MISSING = "nan"  # What numpy, pandas and float() all read as NaN.


def csv_text(study: grid.Study, rows) -> str:
    """One row per trial; numbers at full precision (repr), a missing number is `nan`."""
    names = [n for a in study.axes for n in a.names]
    columns = (["trial_id", "group_id", *names, "seed", "status", "reason"]
               + [f"{p}_{m}" for p in TRAINED for m in PHASE_METRICS]
               + ["val_accuracy", "val_loss", "test_accuracy", "test_loss", "test_examples",
                  "wall_s"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row, _ in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items() if not k.startswith("_")})
    return buffer.getvalue()


def _csv_value(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        return NUMERIC_MISSING
    return repr(float(v)) if isinstance(v, float) else str(v)


def flips_section(study_dir: str, rows, entries, pair=None, unwritten=None) -> list[str]:
    """results.md's per-example flips of the selected configuration (the top mean; when
    that is the baseline, the next best) against the baseline, or of `pair` (two
    configuration numbers, 1-based: configuration, baseline); writes flips.csv and
    flips.png (research/flips.py)."""
    from tapefit.research import flips
    by_number = {e["number"]: e for e in entries}
    if pair is not None:
        chosen, base = by_number[pair[0]], by_number[pair[1]]
    else:
        base = next(e for e in entries if e["baseline"])
        ranked = [e for e in entries if e["top"]] + [e for e in entries if not e["top"]]
        chosen = next((e for e in ranked if e is not base and e["seeds"]), None)
        if chosen is None:
            return []
    predictions = {}
    for row, index in rows:
        if row["status"] == trial_files.FINISHED:
            predictions.setdefault(index, {})[row["seed"]] = row["_predictions"]
    found = flips.compare(predictions.get(chosen["index"], {}),
                          predictions.get(base["index"], {}), read_predictions)
    files = None
    if found and "problem" not in found:
        any_path = next(iter(predictions[chosen["index"]].values()))
        files = flips.write(study_dir, found,
                            f"#{chosen['number']} {chosen['label']} vs "
                            f"{'' if pair else 'baseline '}#{base['number']} {base['label']}",
                            flips.classes_of(any_path),
                            suffix=f"{pair[0]}-vs-{pair[1]}" if pair else "",
                            unwritten=unwritten)
    against = f"#{base['number']} {base['label']}"
    return flips.section(found, f"#{chosen['number']} {chosen['label']}",
                         against if pair else f"the baseline ({against})", files)
