"""The study's report, from what is on disk: `results.csv` (one row per trial),
`results.md` (one row per configuration) and `results.png`. Any process may rewrite
it at any time (atomic writes): every shard of a study reads every trial directory.

What a trial contributes (its metrics, what is checked): research/collect.py.

Select on validation, report on test. The best configuration is the one with the
best mean of the selection metric (`select_by`: `val_accuracy`, the default, or
`val_loss`), and it is called best (★) only when an exact sign-flip test over seeds
says it is better than every other one at level 2α/k (stats.best). Test numbers are
reported for every configuration and never used to choose. Against the baseline, a
verdict needs the sign-flip test (Holm) and the two-level paired bootstrap over seeds
and test examples (stats.paired_bootstrap, Holm) to agree (stats.test_verdicts).

The jobs live in research/collect.py (trial results), research/verdicts.py (verdicts),
research/render.py (results.md/csv), research/figure.py (results.png) and
research/outputs.py (one file written); this module writes them and re-exports them.
"""
from __future__ import annotations

import math
import os
import sys
import time

from tapefit.layout import atomic as files
from tapefit.layout import paths
from tapefit.layout.atomic import atomic_save, atomic_write_text  # noqa: F401  (patched by tests)
from tapefit.layout.temporaries import remove_left_over, writer_in
from tapefit.research import grid, stats

# The report's jobs, re-exported: callers import them from here.
from tapefit.research.collect import (  # noqa: F401
    DAMAGED,
    PHASE_METRICS,
    PROBABILITY_TOLERANCE,
    TRAINED,
    UNFINISHED,
    collect,
    read_predictions,
    trial_metrics,
)
from tapefit.research.figure import figure, plot  # noqa: F401
from tapefit.research.outputs import save_file  # noqa: F401  (re-exported)
from tapefit.research.render import (  # noqa: F401
    CAUTION,
    NUMERIC_MISSING,
    _p,
    csv_text,
    flips_section,
    markdown,
    race_section,
)
from tapefit.research.verdicts import (  # noqa: F401
    DEFAULT_SELECT_BY,
    NAMES,
    SELECT_BY,
    label,
    primary_metric,
    report_metric,
    summarize,
)

RESULTS_CSV, RESULTS_MD, RESULTS_PNG = paths.RESULTS_CSV, paths.RESULTS_MD, paths.RESULTS_PNG


# ---- writing --------------------------------------------------------------------------------

_TMP = files.temp_name_pattern((RESULTS_CSV, RESULTS_MD, RESULTS_PNG))


def remove_stale_temporaries(study_dir: str, now: float | None = None) -> list[str]:
    """Removes the report's temporary files that a killed writer left (our names only,
    regular files only, never through a link; `layout.temporaries`' one rule: never a
    live writer's, another host's once unchanged for an hour); returns them."""
    return remove_left_over(study_dir, writer_in(_TMP), now=now)


def write(study: grid.Study, study_dir: str, trials=None, select_by: str = DEFAULT_SELECT_BY,
          alpha: float = stats.ALPHA, flips: bool = True) -> dict:
    """Rewrites results.csv, results.md and results.png; returns the paths and summaries.
    `flips=False` (the report a running study rewrites after each trial) leaves out the
    per-example flips, whose contact sheets cost seconds a write, and redraws results.png
    at most every FIGURE_INTERVAL_S (a figure costs about a second): the last report of
    the run, and every --report_only, has both.

    A report file that cannot be written (a folder or FIFO in its place, a read-only
    study folder) is not written, with one warning line on stderr (once per process)
    and in the result's `unwritten`; the report is computed all the same (its markdown
    returned): a sweep goes on, `--report_only` prints it."""
    trials = trials if trials is not None else grid.expand(study, study_dir)
    rows = [(collect(t), t.config_index) for t in trials]
    entries = summarize(study, rows, select_by, alpha)
    unwritten = []
    try:
        remove_stale_temporaries(study_dir)
    except OSError:
        pass  # A read-only folder: nothing to remove, and nothing will be written.
    csv_content = csv_text(study, rows)
    save_file(os.path.join(study_dir, RESULTS_CSV),
              lambda path: atomic_write_text(path, csv_content), unwritten)
    text = markdown(study, study_dir, rows, entries, select_by, alpha)
    if "evaluate" in study.phases and not flips:
        text += ("\n## Per-example flips\n\nWritten with the report at the end of the study's "
                 "run (or by `tapefit sweep --report_only`).\n")
    elif "evaluate" in study.phases:  # research/flips.py: the paired per-example view.
        text += "\n" + "\n".join(flips_section(study_dir, rows, entries, unwritten=unwritten))
        by_index = {e["index"]: e["number"] for e in entries}
        for a, b in study.flips:  # --flips: the pairs the user names.
            pair = (by_index[study.config_index(a)], by_index[study.config_index(b)])
            text += "\n" + "\n".join(flips_section(study_dir, rows, entries, pair, unwritten))
    save_file(os.path.join(study_dir, RESULTS_MD),
              lambda path: atomic_write_text(path, text + "\n"), unwritten)
    now = time.monotonic()
    if flips or now - _DRAWN.get(os.path.abspath(study_dir), -math.inf) >= FIGURE_INTERVAL_S:
        if save_file(os.path.join(study_dir, RESULTS_PNG),
                     lambda path: plot(study, entries, path, select_by), unwritten):
            _DRAWN[os.path.abspath(study_dir)] = now
    return {"rows": [r for r, _ in rows], "entries": entries, "markdown": text,
            "unwritten": _warn_unwritten(study_dir, unwritten)}


# A running study's results.png is redrawn at most this often (the last report always).
FIGURE_INTERVAL_S = 20.0
_DRAWN = {}  # Study folder -> when this process last drew its results.png (monotonic).
_WARNED = set()  # Warning lines already printed by this process (a sweep rewrites often).


def _warn_unwritten(study_dir: str, unwritten) -> list[str]:
    """One line per special file in a report file's place, one per reason the other
    writes failed (all the files it stopped); each printed once per process."""
    lines = [f"{path} is {kind}, not a file: the report is not written there; remove it "
             "(the next report writes it)" for path, kind, _ in unwritten if kind]
    by_reason = {}
    for path, kind, why in unwritten:
        if not kind:
            by_reason.setdefault(why, []).append(os.path.relpath(path, study_dir))
    for why, names in by_reason.items():
        lines.append(f"the report could not be written in {study_dir} ({why}): "
                     f"{', '.join(names)} not written; the trials' results are unchanged "
                     "(make the folder writable and run `tapefit sweep "
                     f"--workdir={study_dir} --report_only`)")
    for line in lines:
        if line not in _WARNED:
            _WARNED.add(line)
            print(f"warning: {line}", file=sys.stderr)
    return lines
