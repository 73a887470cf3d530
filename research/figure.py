"""Drawing the study's report: results.png (`figure`, `plot`)."""
from __future__ import annotations

import math

import numpy as np

from tapefit.layout import atomic as files
from tapefit.research import grid
from tapefit.research.collect import TRAINED
from tapefit.research.verdicts import DEFAULT_SELECT_BY, NAMES, report_metric

# ---- results.png ----------------------------------------------------------------------------

def _glyphs(font_manager) -> set:
    """The characters the default fonts (with their fallbacks) can draw."""
    props = font_manager.FontProperties()
    try:
        paths = font_manager.fontManager._find_fonts_by_props(props)
    except AttributeError:  # An older matplotlib: the one font.
        paths = [font_manager.findfont(props)]
    out = set()
    for path in paths:
        out.update(font_manager.get_font(path).get_charmap())
    return out


def _renderable(text: str, charmap) -> str:
    """`text` with what the fonts have no glyph for as \\uXXXX and `$` escaped (mathtext):
    no glyph warning, no math parsing of a label."""
    out = []
    for ch in text:
        if ch == "$":
            out.append(r"\$")
        elif ord(ch) in charmap or ch in " \t":
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def plot(study: grid.Study, entries, path: str, select_by: str = DEFAULT_SELECT_BY) -> None:
    import os

    import matplotlib.pyplot as plt

    from tapefit.layout import paths
    from tapefit.layout.atomic import read_json_or_none
    race = read_json_or_none(os.path.join(os.path.dirname(path), paths.RACE_JSON))
    fig = figure(study, entries, select_by, race=race if isinstance(race, dict) else None)
    try:
        files.atomic_save(lambda tmp: fig.savefig(tmp, format="png", dpi=100), path)
    finally:
        plt.close(fig)


def _dropped(race) -> dict:
    """{configuration label: round it was dropped in} from race.json's content."""
    out = {}
    try:
        for d in (race or {}).get("dropped") or []:
            out[str(d["configuration"])] = d["round"]
    except (KeyError, TypeError, AttributeError):
        return {}
    return out


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
LINESTYLES = ("-", "--", "-.", ":")


def figure(study: grid.Study, entries, select_by: str = DEFAULT_SELECT_BY, race=None):
    """results.png: the reported metric per configuration (seeds, mean, interval), the
    paired per-seed differences to the baseline with the comparison's interval, and the
    mean validation-loss curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager
    from matplotlib.ticker import MaxNLocator

    glyphs = _glyphs(font_manager)
    metric, metric_name = report_metric(study, select_by)
    accuracy = metric.endswith("accuracy")
    fig, (select_ax, left, middle, right) = plt.subplots(1, 4, figsize=(22, 5))
    dropped = _dropped(race)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    base = next(e for e in entries if e["baseline"])
    top_values = []
    for x, e in enumerate(entries):
        color = colors[x % len(colors)]
        chosen = e[f"{select_by}_values"]
        if chosen:
            order = sorted(chosen)
            select_ax.scatter([x - 0.1 + 0.05 * i / max(1, len(order)) for i in range(len(order))],
                              [chosen[k] for k in order], color=color, alpha=0.6, s=18,
                              marker=MARKERS[x % len(MARKERS)], zorder=3)
            sel = e[select_by]
            select_ax.plot([x + 0.12], [sel.mean], marker="*" if e.get("best") else "o",
                           markersize=14 if e.get("best") else 7, color=color, zorder=4)
            verdict = "★ best" if e.get("best") else "top mean" if e["top"] else (
                (e.get("select") or {}).get("verdict", ""))
            select_ax.annotate(_renderable(verdict, glyphs), (x, sel.mean),
                               textcoords="offset points", xytext=(0, 10), ha="center",
                               fontsize=7)
        values = e[f"{metric}_values"]
        seeds = sorted(values)
        jitter = np.linspace(-0.2, 0.0, len(seeds)) if len(seeds) > 1 else [-0.1] * len(seeds)
        if seeds:
            left.scatter([x + j for j in jitter], [values[s] for s in seeds], color=color,
                         alpha=0.6, s=18, zorder=3)
            top_values += [values[s] for s in seeds]
        s = e[metric]
        if s.n:
            if math.isfinite(s.low):
                left.errorbar([x + 0.12], [s.mean], yerr=[[s.mean - s.low], [s.high - s.mean]],
                              fmt="o", color=color, capsize=4, zorder=4)
                top_values.append(s.high)
            else:
                left.plot([x + 0.12], [s.mean], "o", color=color, zorder=4)
        # Paired per-seed differences to the baseline, with the comparison's interval.
        vs = e["vs_base"]
        if vs is not None and vs["paired"].n:
            c = vs["paired"]
            middle.scatter([x - 0.1] * c.n, c.differences, color=color, alpha=0.6, s=18,
                           zorder=3)
            # The verdict's test is the seed-level one (exact sign-flip, seeds as the
            # unit): its seed-level t interval is drawn (circle), the bootstrap's beside
            # it (square, which understates the seed spread with few seeds).
            if math.isfinite(c.low):
                middle.errorbar([x + 0.05], [c.mean], yerr=[[c.mean - c.low], [c.high - c.mean]],
                                fmt="o", color=color, capsize=4, zorder=4)
            else:
                middle.plot([x + 0.05], [c.mean], "o", color=color, zorder=4)
            boot = (vs["bootstrap"] or {}).get("accuracy")
            if boot is not None and math.isfinite(boot.low):
                middle.errorbar([x + 0.2], [boot.mean],
                                yerr=[[boot.mean - boot.low], [boot.high - boot.mean]],
                                fmt="s", color=color, capsize=3, alpha=0.5, zorder=4)
            middle.annotate(vs["verdict"], (x, c.mean), textcoords="offset points",
                            xytext=(0, 12), ha="center", fontsize=7)
        curves = [[loss for _, loss in c] for c in e["curves"]]
        if curves:
            length = min(map(len, curves))
            if length:
                arr = np.asarray([c[:length] for c in curves], dtype=float)
                mean = arr.mean(axis=0)
                epochs = np.arange(1, length + 1)
                # Marker and line style per configuration: identical curves stay visible.
                right.plot(epochs + 0.04 * (x - len(entries) / 2), mean, color=color,
                           marker=MARKERS[x % len(MARKERS)], markersize=4,
                           linestyle=LINESTYLES[x % len(LINESTYLES)],
                           label=f"#{e['number']} {_renderable(_short(e['label']), glyphs)}")
                if len(arr) > 1:
                    std = arr.std(axis=0, ddof=1)
                    right.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
                head_epochs = sum(1 for p, _ in e["curves"][0][:length] if p == "head")
                if 0 < head_epochs < length:
                    right.axvline(head_epochs + 0.5, color="gray", linestyle=":", linewidth=1)
    ticks = [f"#{e['number']}" + (" ★" if e.get("best") else "")
             + (" (base)" if e["baseline"] else "")
             + (f"\ndropped r{dropped[e['label']]}" if e["label"] in dropped else "")
             for e in entries]
    for ax in (select_ax, left, middle):
        ax.set_xlim(-0.6, len(entries) - 0.4)
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels([_renderable(t, glyphs) for t in ticks], fontsize=8)
        ax.set_xlabel("configuration (numbers as in results.md)", fontsize=8)
    if accuracy and top_values:  # An interval past [0, 1] is not drawn past it.
        low, high = left.get_ylim()
        left.set_ylim(max(0.0, low), min(1.0, high))
    select_ax.set_ylabel(NAMES[select_by])
    select_ax.set_title(_renderable(f"selection: {NAMES[select_by]} per seed, mean; ★ and "
                                    "verdicts vs top", glyphs),
                        fontsize=9)
    left.set_ylabel(metric_name)
    left.set_title(f"{metric_name}: seeds (dots), mean and 95 % t interval", fontsize=9)
    middle.axhline(0.0, color="gray", linewidth=1)
    middle.set_ylabel(f"Δ {metric_name} vs #{base['number']} (baseline)")
    middle.set_title("paired per-seed differences (dots), 95 % seed-level t interval (circle)"
                     + (", bootstrap (square)" if metric == "test_accuracy" else "")
                     + "; verdict: exact sign-flip, Holm", fontsize=9)
    trained = [p for p in TRAINED if p in study.phases]
    right.set_xlabel("epoch" + (f" ({', then '.join(trained)})" if trained else ""))
    longest = max((min(map(len, e["curves"])) for e in entries if e["curves"]), default=1)
    right.set_xlim(0.5, max(1, longest) + 0.5)
    right.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    right.set_ylabel("validation loss")
    right.set_title("mean validation loss over seeds, band: ± 1 std", fontsize=9)
    if any(e["curves"] for e in entries):
        right.legend(fontsize=7)
    fig.tight_layout()
    return fig
