"""The paired per-example view of a study (issue 32): which test photos a configuration
*fixes* against the baseline (wrong under the baseline, right under the configuration) and
which it *breaks* (the reverse), per seed and consistently across seeds.

Per paired seed (the same seed of both configurations, matched by example id as the
bootstrap of research/report.py): the counts of fixed and broken photos and the exact
McNemar test on them (`stats.mcnemar_exact`). A photo flips *consistently* when it is fixed
(or broken) on more than half of the paired seeds. `flips.csv` lists every photo that flips
on some seed; `flips.png` is a contact sheet of the consistent ones (at most `SHEET` of
each kind, most seeds first, then the largest change in loss); results.md gets a short
section linking both (`section`).
"""
from __future__ import annotations

import csv
import io
import os

import numpy as np

from tapefit.layout import paths
from tapefit.layout.atomic import atomic_write_text
from tapefit.research import stats

SHEET = 12  # Photos of each kind (fixed, broken) on flips.png.


def compare(config: dict, baseline: dict, read) -> dict | None:
    """`config`, `baseline`: {seed: predictions.npz path}; `read(path)`: the report's
    reader ({ids, labels, correct, loss, split, image_size} or {"problem"} or None).
    None when no paired seed has predictions on both sides; {"problem": why} when they
    cannot be paired."""
    seeds = sorted(s for s in config if s in baseline)
    loaded = {}
    for s in seeds:
        a, b = read(config[s]), read(baseline[s])
        if a is None or b is None:
            continue
        for p in (a, b):
            if "problem" in p:
                return {"problem": p["problem"]}
        loaded[s] = (a, b)
    if not loaded:
        return None
    first = next(iter(loaded.values()))[0]
    common = None
    for a, b in loaded.values():
        if a["split"] != first["split"] or b["split"] != first["split"]:
            return {"problem": "the trials' test splits differ (data flags)"}
        ids = set(a["ids"].tolist()) & set(b["ids"].tolist())
        common = ids if common is None else common & ids
    order = sorted(common, key=lambda x: (len(x), x))
    if not order:
        return {"problem": "the trials' predictions share no test example"}
    problem = unpaired([(_trial_file(path), p["ids"]) for s in sorted(loaded)
                        for path, p in zip((config[s], baseline[s]), loaded[s])], len(order))
    if problem:
        return {"problem": problem}
    per_seed, fixed_on, broken_on = [], np.zeros(len(order)), np.zeros(len(order))
    loss_change = np.zeros(len(order))
    labels = None
    for s, (a, b) in sorted(loaded.items()):
        ca, la, lab_a = _aligned(a, order)
        cb, lb, lab_b = _aligned(b, order)
        if not np.array_equal(lab_a, lab_b) or (labels is not None
                                                 and not np.array_equal(labels, lab_a)):
            return {"problem": "the same test example has different labels in two trials"}
        labels = lab_a
        fixed, broken = (ca & ~cb), (cb & ~ca)
        fixed_on += fixed
        broken_on += broken
        loss_change += la - lb
        per_seed.append({"seed": s, "fixed": int(fixed.sum()), "broken": int(broken.sum()),
                         "both_right": int((ca & cb).sum()), "both_wrong": int((~ca & ~cb).sum()),
                         "p_mcnemar": stats.mcnemar_exact(int(fixed.sum()), int(broken.sum()))})
    n = len(loaded)
    loss_change /= n
    majority = n / 2
    photos = []
    for i, example in enumerate(order):
        if fixed_on[i] or broken_on[i]:
            kind = ("fixed" if fixed_on[i] > majority else
                    "broken" if broken_on[i] > majority else "")
            photos.append({"id": example, "label": int(labels[i]), "fixed_on": int(fixed_on[i]),
                           "broken_on": int(broken_on[i]), "consistent": kind,
                           "mean_loss_change": float(loss_change[i])})
    return {"seeds": n, "examples": len(order), "per_seed": per_seed, "photos": photos,
            "consistently_fixed": sum(p["consistent"] == "fixed" for p in photos),
            "consistently_broken": sum(p["consistent"] == "broken" for p in photos),
            "fixed": sum(r["fixed"] for r in per_seed),
            "broken": sum(r["broken"] for r in per_seed),
            "split": first["split"], "image_size": first["image_size"]}


def unpaired(named_ids, shared: int) -> str | None:
    """Why the trials' predictions cannot be paired example by example although their
    test splits are the same (None when every trial scored the same `shared` examples):
    pairing on the examples they share would quietly compare fewer examples than each
    trial's test accuracy counts. `named_ids`: [(name, ids)], e.g. the trial's file."""
    sizes = [(len(ids), name) for name, ids in named_ids]
    if all(n == shared for n, _ in sizes):
        return None
    most = max(n for n, _ in sizes)
    fewest, name = min(sizes, key=lambda x: x[0])
    if fewest == shared:
        return (f"{name} has {fewest} of the {most} test examples the other trials scored: "
                f"not paired on the {shared} they share")
    return (f"the trials' test examples differ ({name} and others share {shared} of "
            f"{most}): not paired on the {shared} they share")


def _trial_file(path: str) -> str:
    """`<trial>/evaluate/predictions.npz` of a trial's predictions path."""
    phase_dir = os.path.dirname(path)
    return os.path.join(os.path.basename(os.path.dirname(phase_dir)),
                        os.path.basename(phase_dir), os.path.basename(path))


def classes_of(path: str):
    """The class names a predictions.npz records (None when it cannot say)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return [str(c) for c in np.asarray(data["classes"]).tolist()]
    except Exception:  # noqa: BLE001
        return None


def _aligned(p, order):
    where = {x: i for i, x in enumerate(p["ids"].tolist())}
    index = np.asarray([where[x] for x in order])
    return p["correct"][index].astype(bool), p["loss"][index], p["labels"][index]


def csv_text(flips: dict, classes=None) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "label", "fixed_on_seeds", "broken_on_seeds", "consistently",
                     "mean_loss_change"])
    for p in flips["photos"]:
        writer.writerow([p["id"], _class(p["label"], classes), p["fixed_on"], p["broken_on"],
                         p["consistent"], f"{p['mean_loss_change']:.6f}"])
    return out.getvalue()


def _class(label, classes):
    return classes[label] if classes and 0 <= label < len(classes) else str(label)


def chosen(flips: dict) -> list[dict]:
    """The photos of the contact sheet: the consistent flips, most seeds first."""
    out = []
    for kind, key, sign in (("fixed", "fixed_on", 1), ("broken", "broken_on", -1)):
        same = [p for p in flips["photos"] if p["consistent"] == kind]
        same.sort(key=lambda p: (-p[key], sign * p["mean_loss_change"], p["id"]))
        out += same[:SHEET]
    return out


def write(study_dir: str, flips: dict, title: str, classes=None, suffix: str = "",
          unwritten=None) -> dict:
    """flips.csv and flips.png in `study_dir` (`suffix`: flips-<suffix>.csv/png, for a
    pair that --flips names); returns their names (png None when the photos cannot be
    read: the sheet then names the problem). A file that cannot be written (a folder in
    its place, a read-only folder) is left, appended to `unwritten` (report.save_file)."""
    from tapefit.loops import interpret
    from tapefit.research.outputs import save_file
    unwritten = [] if unwritten is None else unwritten
    csv_name, png_name = (paths.FLIPS_CSV, paths.FLIPS_PNG) if not suffix else (
        f"flips-{suffix}.csv", f"flips-{suffix}.png")
    content = csv_text(flips, classes)
    save_file(os.path.join(study_dir, csv_name),
                     lambda path: atomic_write_text(path, content), unwritten)
    sheet = chosen(flips)
    images, note = [], ""
    if sheet:
        try:
            photos = interpret.split_photos(flips["split"], flips["image_size"],
                                            [p["id"] for p in sheet])
            images = photos(list(range(len(sheet))))
        except Exception as e:  # noqa: BLE001  (the report goes on without the photos)
            note = f" (photos unreadable: {type(e).__name__})"
            blank = np.full((flips["image_size"], flips["image_size"], 3), 220, np.uint8)
            images = [blank] * len(sheet)
    titles = [f"{p['consistent']} {p['fixed_on' if p['consistent'] == 'fixed' else 'broken_on']}"
              f"/{flips['seeds']} seeds\n{_short(p['id'])}\ntrue {_class(p['label'], classes)}, "
              f"Δloss {p['mean_loss_change']:+.2f}" for p in sheet]
    fig = interpret.photo_sheet(images, titles, columns=6, title=title + note)
    if not save_file(os.path.join(study_dir, png_name),
                            lambda path: interpret.save_figure(fig, path), unwritten):
        import matplotlib.pyplot as plt
        plt.close(fig)  # save_figure closes it; not called, or failed before.
    return {"png": png_name, "csv": csv_name, "note": note}


def _short(text: str, width: int = 26) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def section(flips: dict | None, name: str, base_name: str, files: dict | None) -> list[str]:
    """The results.md lines of the paired per-example view."""
    lines = [f"## Per-example flips: {name} against {base_name}", ""]
    if flips is None:
        return lines + ["No paired seed has a readable evaluate/predictions.npz on both "
                        "sides: nothing to pair.", ""]
    if "problem" in flips:
        return lines + [f"Not paired: {flips['problem']}.", ""]
    lines += [f"On the {flips['examples']} test examples both scored, paired by seed: *fixed* "
              "is wrong under the baseline and right under the configuration, *broken* the "
              "reverse; p is the exact McNemar test of the seed's discordant pairs "
              "(two-sided binomial at one half). A photo flips *consistently* when it does "
              f"so on more than half of the {flips['seeds']} paired seeds.", ""]
    rows = [[str(r["seed"]), str(r["fixed"]), str(r["broken"]), str(r["both_right"]),
             str(r["both_wrong"]), _p(r["p_mcnemar"])] for r in flips["per_seed"]]
    rows.append(["all", str(flips["fixed"]), str(flips["broken"]), "", "", ""])
    header = ["seed", "fixed", "broken", "both right", "both wrong", "p McNemar (exact)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"Consistently fixed: {flips['consistently_fixed']} photos; consistently "
              f"broken: {flips['consistently_broken']}."
              + (f" Contact sheet: [{files['png']}]({files['png']}){files.get('note', '')}; "
                 f"every flip: [{files['csv']}]({files['csv']})." if files else ""), ""]
    return lines


def _p(p):
    return f"{p:.3f}" if p >= 0.001 else "<0.001"
