"""What `--phase=evaluate` scored, interpreted: per-class metrics, the confusion matrix,
calibration, the highest-loss photos (docs/interpretation.md).

`interpret(out_dir, labels, probabilities, loss, classes, ids, photos, ...)` writes, next to
evaluation.json (each file atomically; `--interpret_split=validation`: in
`evaluate/validation/`):

- `interpretation.json`: per-class precision, recall, F1 and support
  (`sklearn.metrics.precision_recall_fscore_support`), their macro and weighted averages,
  the confusion matrix (`sklearn.metrics.confusion_matrix`; rows the true class, columns
  the predicted one) as counts and row-normalized, the most confused pairs, calibration
  (below) and the top losses;
- `per_class.csv`, `confusion_matrix.csv`: the same numbers as tables;
- `confusion_matrix.png`, `reliability.png`, `top_losses.png` (matplotlib, Agg);
- with `--tensorboard`: the two diagrams as image summaries and the per-class metrics and
  ECE as scalars in `evaluate/tensorboard/`.

Calibration (Guo et al., ICML 2017): the top-class confidence (the largest predicted
probability) of each example falls in one of `ECE_BINS` = 15 equal-width bins
((0, 1/15], (1/15, 2/15], ..., (14/15, 1]; 0 goes to the first); the expected calibration
error is the sum over bins of (examples in the bin / all) x |accuracy - mean confidence|,
the maximum calibration error the largest such gap over non-empty bins.

The photos (`photos(indices) -> [uint8[S, S, 3]]`) are decoded only for the K top losses:
`folder_photos` reads the files the prediction ids name, `dataset_photos` walks the split
and keeps the K positions. `split_photos` does either from a predictions.npz's split
description (research/flips.py). No TensorFlow import until a photo, a heatmap or a
summary needs it. `python -m tapefit.loops.interpret WORKDIR [K]` (`reinterpret`) writes
the test interpretation again from an evaluated run's predictions.npz alone.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np

from tapefit.flags.errors import DataError, RunError
from tapefit.layout import paths
from tapefit.layout.atomic import atomic_save, atomic_write_json, atomic_write_text

ECE_BINS = 15
BINNING = (f"{ECE_BINS} equal-width bins of the top-class confidence over [0, 1] "
           "(intervals (i/15, (i+1)/15], 0 in the first), as Guo et al. 2017")
MOST_CONFUSED = 10  # Pairs listed in interpretation.json.
SPLITS = ("test", "validation")


# ---- reading ---------------------------------------------------------------------------------
def read_predictions(path: str) -> dict:
    """predictions.npz (loops/predictions.py) as arrays; a one-line RunError when there is
    none or it is damaged."""
    if not os.path.isfile(path):
        raise RunError(f"no predictions in {path}: run --phase=evaluate for this --workdir "
                       "first")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {"ids": np.asarray(data["ids"]).astype(str),
                   "labels": np.asarray(data["labels"]).astype(np.int64),
                   "probabilities": np.asarray(data["probabilities"], np.float64),
                   "loss": np.asarray(data["loss"], np.float64),
                   "classes": [str(c) for c in np.asarray(data["classes"]).tolist()],
                   "split": str(data["split"]), "image_size": int(data["image_size"])}
    except Exception as e:  # noqa: BLE001  (any damage: one line)
        raise RunError(f"{path} is damaged ({type(e).__name__}); run --phase=evaluate again "
                       "with --overwrite") from None
    return out


# ---- the numbers -------------------------------------------------------------------------------
def calibration(confidence, correct, bins: int = ECE_BINS) -> dict:
    """ECE and MCE of top-class confidences over `bins` equal-width bins (module docstring)."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    n = len(confidence)
    edges = np.linspace(0.0, 1.0, bins + 1)  # Bin b: (edges[b], edges[b + 1]]; 0 in bin 0.
    index = np.digitize(confidence, edges[1:-1], right=True)
    table, ece, mce = [], 0.0, 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
               "accuracy": None, "confidence": None}
        if count:
            accuracy, mean_conf = float(correct[members].mean()), float(confidence[members].mean())
            row.update(accuracy=accuracy, confidence=mean_conf)
            gap = abs(accuracy - mean_conf)
            ece += count / n * gap
            mce = max(mce, gap)
        table.append(row)
    return {"ece": ece, "mce": mce, "bins": table, "binning": BINNING}


def metrics(labels, probabilities, classes, split: str = "test") -> dict:
    """Per-class metrics, the confusion matrix, the most confused pairs and calibration.
    A class without any example in the split is a one-line DataError (its recall and its
    confusion-matrix row are undefined)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    k = len(classes)
    if len(labels) == 0:
        raise DataError(f"the {split} split has no examples to interpret; pass data with "
                        "examples, or --interpret_split=none")
    if probabilities.shape != (len(labels), k):
        raise RunError(f"the predictions have {probabilities.shape[1]} classes, the run "
                       f"{k}; run --phase=evaluate again with --overwrite")
    support = np.bincount(labels, minlength=k)
    missing = [classes[i] for i in range(k) if support[i] == 0]
    if missing:
        raise DataError(f"class {', '.join(map(repr, missing))} has no example in the "
                        f"{split} split: its recall and confusion-matrix row are undefined; "
                        f"add photos of it, or pass --interpret_split="
                        f"{'validation' if split == 'test' else 'test'} or none")
    predicted = probabilities.argmax(axis=1)
    everyone = list(range(k))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, labels=everyone, zero_division=0)
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, predicted, labels=everyone,
                                                     average=average, zero_division=0)
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    counts = confusion_matrix(labels, predicted, labels=everyone)
    normalized = counts / counts.sum(axis=1, keepdims=True)
    pairs = [{"true": classes[t], "predicted": classes[q], "count": int(counts[t, q]),
              "share_of_true": float(normalized[t, q])}
             for t in range(k) for q in range(k) if t != q and counts[t, q]]
    pairs.sort(key=lambda x: (-x["count"], x["true"], x["predicted"]))
    correct = predicted == labels
    return {
        "split": split, "examples": int(len(labels)), "classes": list(classes),
        "accuracy": float(correct.mean()),
        "per_class": [{"class": classes[i], "precision": float(precision[i]),
                       "recall": float(recall[i]), "f1": float(f1[i]),
                       "support": int(support[i])} for i in range(k)],
        "macro_avg": averages["macro"], "weighted_avg": averages["weighted"],
        "confusion_matrix": {"rows": "true class", "columns": "predicted class",
                             "counts": counts.tolist(), "row_normalized": normalized.tolist()},
        "most_confused": pairs[:MOST_CONFUSED],
        "calibration": calibration(probabilities.max(axis=1), correct),
    }


def top_losses(labels, probabilities, loss, classes, ids, k: int) -> list[dict]:
    """The `k` examples with the highest loss (ties: the earlier first)."""
    if k < 1:
        raise DataError(f"--top_losses={k} shows no photo; pass --top_losses=1 or more")
    order = np.argsort(-np.asarray(loss, np.float64), kind="stable")[:k]
    predicted = np.asarray(probabilities).argmax(axis=1)
    return [{"rank": r + 1, "index": int(i), "id": str(ids[i]), "true": classes[labels[i]],
             "predicted": classes[predicted[i]],
             "probability": float(probabilities[i, predicted[i]]),
             "true_probability": float(probabilities[i, labels[i]]), "loss": float(loss[i])}
            for r, i in enumerate(order)]


# ---- the photos ----------------------------------------------------------------------------------
def folder_photos(root: str, ids, image_size: int):
    """photos(indices): the image files `root/<id>` (ids relative to the data folder)."""
    def photos(indices):
        from tapefit.input_pipeline.folders import read_image_file
        return [read_image_file(os.path.join(root, ids[i]), image_size) for i in indices]
    return photos


def dataset_photos(batches):
    """photos(indices): positions in a finite dataset of (image batch, labels) or of
    (image, label), read in one pass that keeps only the wanted ones."""
    def photos(indices):
        wanted = {int(i) for i in indices}
        found, position = {}, 0
        last = max(wanted) if wanted else -1
        for x, _ in batches:
            x = np.asarray(x)
            images = x if x.ndim == 4 else x[None]
            for image in images:
                if position in wanted:
                    found[position] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
                position += 1
            if position > last:
                break
        missing = wanted - set(found)
        if missing:
            raise RunError(f"the split has {position} examples, the predictions name "
                           f"position {min(missing)}; run --phase=evaluate again")
        return [found[int(i)] for i in indices]
    return photos


def split_photos(split: str, image_size: int, ids):
    """photos(indices) for a predictions.npz's `split` description (loops/predictions.py):
    the files of an image folder, else the test split re-read by position."""
    described = json.loads(split)
    data_dir = described.get("data_dir")
    if data_dir and not all(str(i).isdigit() for i in ids):
        return folder_photos(data_dir, list(ids), image_size)
    from tapefit.flags.config import Config

    def photos(indices):
        from tapefit.input_pipeline.evaluation import load_test_split_with_ids
        fields = {k: v for k, v in described.items() if k in Config.__dataclass_fields__}
        cfg = Config(**fields, image_size=image_size, image_cache="off", verbose=0)
        test = load_test_split_with_ids(cfg)[0]
        return dataset_photos(test.as_numpy_iterator())(indices)
    return photos


# ---- Grad-CAM -----------------------------------------------------------------------------------
def gradcam(model, images, classes_index) -> list[np.ndarray]:
    """Grad-CAM (Selvaraju et al. 2017) on the backbone's last convolutional block (the
    input of the head's global pooling), for class `classes_index[i]` of image i: the
    feature maps weighted by the mean gradient of the class's logit, ReLU, scaled to
    [0, 1]; computed with a tf.GradientTape. One [h, w] map per image."""
    import keras
    import tensorflow as tf

    from tapefit.model.names import AVG_POOL
    inner = _with_layer(model, AVG_POOL)
    if inner is None:
        raise RunError("--gradcam needs the classifier's global pooling layer; this model "
                       "has none")
    grad_model = keras.Model(inner.inputs, [inner.get_layer(AVG_POOL).input, inner.outputs[0]])
    maps = []
    for image, c in zip(images, classes_index):
        x = tf.convert_to_tensor(np.asarray(image, np.float32)[None])
        with tf.GradientTape() as tape:
            tape.watch(x)  # The backbone may be frozen: record from the input on.
            features, logits = grad_model(x, training=False)
            score = tf.cast(logits, tf.float32)[0, int(c)]
        grads = tape.gradient(score, features)
        features = tf.cast(features, tf.float32)
        grads = tf.zeros_like(features) if grads is None else tf.cast(grads, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2))  # [1, channels]
        cam = tf.nn.relu(tf.reduce_sum(features * weights[:, None, None, :], axis=-1))[0]
        cam = np.asarray(cam)
        top = cam.max()
        maps.append(cam / top if top > 0 else cam)
    return maps


def _with_layer(model, name):
    names = {layer.name for layer in model.layers}
    if name in names:
        return model
    for layer in model.layers:  # --tta wraps the classifier in another model.
        if hasattr(layer, "layers"):
            found = _with_layer(layer, name)
            if found is not None:
                return found
    return None


# ---- the figures ---------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str) -> None:
    """The figure as a PNG at `path`, atomically."""
    plt = _pyplot()

    def save(tmp):
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    try:
        atomic_save(save, path)
    finally:
        plt.close(fig)


def confusion_figure(result: dict):
    plt = _pyplot()
    classes = result["classes"]
    counts = np.asarray(result["confusion_matrix"]["counts"])
    normalized = np.asarray(result["confusion_matrix"]["row_normalized"])
    k = len(classes)
    size = max(4.0, 0.6 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    if k <= 30:
        for t in range(k):
            for q in range(k):
                ax.text(q, t, f"{counts[t, q]}\n{normalized[t, q]:.0%}", ha="center",
                        va="center", fontsize=8,
                        color="white" if normalized[t, q] > 0.5 else "black")
    ax.set_xticks(range(k), classes, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix, {result['split']} ({result['examples']} examples, "
                 f"accuracy {result['accuracy']:.3f})\ncounts and share of the true class",
                 fontsize=9)
    return fig


def reliability_figure(result: dict):
    plt = _pyplot()
    cal = result["calibration"]
    bins = cal["bins"]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / len(bins)
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    accuracy = [b["accuracy"] or 0.0 for b in bins]
    confidence = [b["confidence"] if b["count"] else c for b, c in zip(bins, centers)]
    ax.bar(centers, accuracy, width=width, edgecolor="black", color="tab:blue",
           label="accuracy in the bin")
    ax.bar(centers, [c - a if b["count"] else 0 for b, a, c in zip(bins, accuracy, confidence)],
           bottom=accuracy, width=width, edgecolor="tab:red", color="tab:red", alpha=0.3,
           label="gap to the mean confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"reliability, {result['split']}: ECE {cal['ece']:.4f}, MCE {cal['mce']:.4f}"
                 f"\n{len(bins)} equal-width bins of the top-class confidence", fontsize=9)
    hist.bar(centers, [b["count"] for b in bins], width=width, color="gray", edgecolor="black")
    hist.set_xlabel("top-class confidence")
    hist.set_ylabel("examples")
    hist.set_xlim(0, 1)
    return fig


def photo_sheet(images, titles, heatmaps=None, columns: int = 4, title: str = ""):
    """A contact sheet: one photo per cell with its title (and heatmap overlay)."""
    plt = _pyplot()
    n = max(1, len(images))
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows + 0.4),
                             squeeze=False)
    for cell, ax in enumerate(axes.flat):
        ax.axis("off")
        if cell >= len(images):
            continue
        image = np.asarray(images[cell])
        ax.imshow(image)
        if heatmaps is not None:
            ax.imshow(_upsample(heatmaps[cell], image.shape[:2]), cmap="jet", alpha=0.4,
                      vmin=0.0, vmax=1.0)
        ax.set_title(titles[cell], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    if not images:
        axes.flat[0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    return fig


def _upsample(heatmap, shape):
    """A heatmap (e.g. 3 x 3 at 96 pixels) resized bilinearly to the photo's size."""
    from PIL import Image
    h, w = shape
    image = Image.fromarray(np.asarray(heatmap, np.float32), mode="F")
    return np.asarray(image.resize((w, h), Image.BILINEAR))


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


# ---- writing -------------------------------------------------------------------------------------
def interpret(out_dir: str, labels, probabilities, loss, classes, ids, photos, k: int,
              split: str = "test", model=None, gradcam_on: bool = False,
              tensorboard_dir: str | None = None) -> dict:
    """Writes the interpretation files into `out_dir` (module docstring); returns
    interpretation.json's content."""
    classes = [str(c) for c in classes]
    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    result = metrics(labels, probabilities, classes, split)
    losses = top_losses(labels, probabilities, np.asarray(loss), classes, list(ids), k)
    result["top_losses"] = losses
    result["files"] = {name: name for name in (
        paths.PER_CLASS_CSV, paths.CONFUSION_CSV, paths.CONFUSION_PNG, paths.RELIABILITY_PNG,
        paths.TOP_LOSSES_PNG)}
    os.makedirs(out_dir, exist_ok=True)
    images = photos([x["index"] for x in losses])
    heatmaps = None
    if gradcam_on and model is not None:
        heatmaps = gradcam(model, images, [classes.index(x["predicted"]) for x in losses])
        result["gradcam"] = "the backbone's last convolutional block, the predicted class"
    titles = [f"#{x['rank']} {_short(x['id'])}\ntrue {x['true']} "
              f"(p={x['true_probability']:.2f})\npred {x['predicted']} "
              f"(p={x['probability']:.2f}) loss {x['loss']:.2f}" for x in losses]
    save_figure(photo_sheet(images, titles, heatmaps,
                            title=f"top {len(losses)} losses, {split}"
                            + (" (Grad-CAM: predicted class)" if heatmaps else "")),
                os.path.join(out_dir, paths.TOP_LOSSES_PNG))
    figures = {paths.CONFUSION_PNG: confusion_figure(result),
               paths.RELIABILITY_PNG: reliability_figure(result)}
    images_for_tb = {name: png_bytes(fig) for name, fig in figures.items()}
    for name, fig in figures.items():
        save_figure(fig, os.path.join(out_dir, name))
    atomic_write_text(os.path.join(out_dir, paths.PER_CLASS_CSV), per_class_csv(result))
    atomic_write_text(os.path.join(out_dir, paths.CONFUSION_CSV), confusion_csv(result))
    if tensorboard_dir:
        write_summaries(tensorboard_dir, result, images_for_tb)
        result["files"]["tensorboard"] = tensorboard_dir
    atomic_write_json(os.path.join(out_dir, paths.INTERPRETATION_JSON), result)
    return result


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def per_class_csv(result: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for row in result["per_class"]:
        writer.writerow([row["class"], f"{row['precision']:.6f}", f"{row['recall']:.6f}",
                         f"{row['f1']:.6f}", row["support"]])
    for name in ("macro_avg", "weighted_avg"):
        avg = result[name]
        writer.writerow([name, f"{avg['precision']:.6f}", f"{avg['recall']:.6f}",
                         f"{avg['f1']:.6f}", result["examples"]])
    return out.getvalue()


def confusion_csv(result: dict) -> str:
    """Counts: one row per true class, one column per predicted class."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["true \\ predicted", *result["classes"]])
    for name, row in zip(result["classes"], result["confusion_matrix"]["counts"]):
        writer.writerow([name, *row])
    return out.getvalue()


def write_summaries(log_dir: str, result: dict, pngs: dict) -> None:
    """The confusion matrix and the reliability diagram as image summaries, per-class
    precision/recall/F1 and ECE as scalars (step 0), in a fresh `log_dir`."""
    import shutil

    import tensorflow as tf
    shutil.rmtree(log_dir, ignore_errors=True)  # One evaluation's summaries, not a history.
    writer = tf.summary.create_file_writer(log_dir)
    split = result["split"]
    with writer.as_default(step=0):
        for name, data in pngs.items():
            image = tf.image.decode_png(data, channels=4)[None]
            tf.summary.image(f"{split}/{name.removesuffix('.png')}", image, step=0)
        for row in result["per_class"]:
            for metric in ("precision", "recall", "f1"):
                tf.summary.scalar(f"{split}/{metric}/{row['class']}", row[metric], step=0)
        tf.summary.scalar(f"{split}/ece", result["calibration"]["ece"], step=0)
        tf.summary.scalar(f"{split}/macro_f1", result["macro_avg"]["f1"], step=0)
    writer.close()


def summary_of(result: dict, out_dir: str) -> dict:
    """What evaluation.json and summary.json say of the interpretation."""
    return {"split": result["split"], "ece": result["calibration"]["ece"],
            "macro_f1": result["macro_avg"]["f1"], "binning": BINNING,
            "folder": out_dir,
            "most_confused": [f"{x['true']} -> {x['predicted']}: {x['count']}"
                              for x in result["most_confused"][:3]]}


# ---- the evaluate phase --------------------------------------------------------------------------
def for_evaluation(cfg, ev, model, per_example) -> dict | None:
    """`--phase=evaluate`'s interpretation (`--interpret_split`): the test predictions it
    scored, next to evaluation.json; or the validation split's, predicted here and written
    with its own predictions.npz in evaluate/validation/. Returns `summary_of`'s dict."""
    if cfg.interpret_split == "none":
        return None
    from tapefit.loops import predictions
    size = ev.data_cfg.image_size
    data_dir = ev.data_cfg.data_dir
    if cfg.interpret_split == "test":
        out_dir, ids, batches = cfg.run_dir, ev.example_ids, ev.batches
    else:
        from tapefit import input_pipeline
        splits = input_pipeline.load_splits(ev.data_cfg)
        if tuple(splits.class_names) != tuple(ev.class_names):
            raise DataError(f"the validation data's classes {list(splits.class_names)} differ "
                            f"from the trained ones {list(ev.class_names)}")
        out_dir = os.path.join(cfg.run_dir, paths.INTERPRET_VALIDATION_DIR)
        ids = splits.ids.get("validation")
        batches = input_pipeline.eval_batches(splits.validation, cfg.batch_size)
        per_example = predictions.predict(model, batches)
        described = json.loads(predictions.split_description(ev.data_cfg))
        predictions.write(os.path.join(out_dir, paths.PREDICTIONS_NPZ), *per_example,
                          json.dumps({**described, "interpreted_split": "validation"},
                                     sort_keys=True), size, ev.class_names, ids=ids)
    labels, probabilities, loss, _ = per_example
    folder_ids = ids is not None and len(ids) == len(labels) and data_dir
    ids = list(ids) if folder_ids else [str(i) for i in range(len(labels))]
    photos = folder_photos(os.path.normpath(data_dir), ids, size) if folder_ids else \
        dataset_photos(batches)
    tensorboard = os.path.join(cfg.run_dir, paths.TENSORBOARD_DIR) if cfg.tensorboard else None
    result = interpret(out_dir, labels, probabilities, loss, ev.class_names, ids, photos,
                       cfg.top_losses, cfg.interpret_split, model=model,
                       gradcam_on=cfg.gradcam, tensorboard_dir=tensorboard)
    import logging
    logging.info("interpretation (%s): ECE %.4f (%s), macro F1 %.4f; %s, %s, %s in %s",
                 cfg.interpret_split, result["calibration"]["ece"], f"{ECE_BINS} bins",
                 result["macro_avg"]["f1"], paths.INTERPRETATION_JSON, paths.RELIABILITY_PNG,
                 paths.TOP_LOSSES_PNG, out_dir)
    return summary_of(result, out_dir)


# ---- again, from the files: python -m tapefit.loops.interpret WORKDIR [K] ---------------
def reinterpret(workdir: str, k: int = 16, split: str = "test") -> dict:
    """The interpretation of an evaluated run again from its predictions.npz (no model, no
    scoring: photos re-read as the ids say, no Grad-CAM, no summaries); a run without
    predictions is a one-line RunError."""
    folder = paths.phase_dir(workdir, paths.EVALUATE_PHASE)
    if split == "validation":
        folder = os.path.join(folder, paths.INTERPRET_VALIDATION_DIR)
    p = read_predictions(os.path.join(folder, paths.PREDICTIONS_NPZ))
    photos = split_photos(p["split"], p["image_size"], p["ids"].tolist())
    return interpret(folder, p["labels"], p["probabilities"], p["loss"], p["classes"],
                     p["ids"].tolist(), photos, k, split)


def main(argv=None) -> int:
    import sys

    from tapefit.flags.errors import TapefitError
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up lines.
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-") or len(args) > 2:
        print("usage: python -m tapefit.loops.interpret WORKDIR [K]", file=sys.stderr)
        return 2
    try:
        k = int(args[1]) if len(args) > 1 else 16
        result = reinterpret(args[0], k)
    except ValueError as e:
        if isinstance(e, TapefitError):
            print(f"error: {e}", file=sys.stderr)
        else:
            print(f"error: K={args[1]!r} is not a whole number; pass e.g. 16", file=sys.stderr)
        return 1
    except TapefitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"interpretation ({result['split']}): ECE {result['calibration']['ece']:.4f}, "
          f"macro F1 {result['macro_avg']['f1']:.4f}; files in "
          f"{paths.phase_dir(args[0], paths.EVALUATE_PHASE)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
