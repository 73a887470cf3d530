"""Reads TensorBoard event files back: (run, tag, step, value) for every summary."""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

try:
    from tensorboard.backend.event_processing import event_accumulator
except ImportError:  # pragma: no cover - tensorboard is a test extra.
    event_accumulator = None


def _value(tensor_proto):
    value = tf.make_ndarray(tensor_proto)
    if value.dtype.kind in "SO":  # Strings (model JSON, PNG images): compare bytes.
        return ("bytes", value.shape, tuple(np.ravel(value).tolist()))
    return (value.dtype.str, value.shape, value.tobytes())


def _read_file_accumulator(path):
    acc = event_accumulator.EventAccumulator(
        path, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.GRAPH: 1},
        purge_orphaned_data=False)
    acc.Reload()
    out = []
    tags = acc.Tags()
    for tag in sorted(tags.get("tensors", ())):
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        for event in acc.Tensors(tag):
            out.append((tag, plugin, event.step, _value(event.tensor_proto)))
    if tags.get("graph"):
        out.append(("__graph__", "graph", 0, ("present",)))
    return out


def _read_file_iterator(path):
    out = []
    for event in tf.compat.v1.train.summary_iterator(path):
        if event.HasField("graph_def"):
            out.append(("__graph__", "graph", 0, ("present",)))
        for v in event.summary.value:
            out.append((v.tag, v.metadata.plugin_data.plugin_name, event.step, _value(v.tensor)))
    # The accumulator's order: by tag, then as written.
    return sorted(out, key=lambda item: item[0])


def _creation_order(path):
    """events.out.tfevents.<time>.<host>.<pid>.<counter>.v2: by time, then counter."""
    parts = os.path.basename(path).split(".")
    return int(parts[3]), int(parts[-2]) if parts[-2].isdigit() else 0, path


def read_scalars(log_dir):
    """{run ("train", "validation", ...): [(tag, plugin, step, value), ...]}, file by
    file in creation order (a writer per training), each file by tag then step."""
    read = _read_file_accumulator if event_accumulator is not None else _read_file_iterator
    runs = {}
    for folder, _, names in os.walk(log_dir):
        files = [os.path.join(folder, n) for n in names if n.startswith("events.out.tfevents.")]
        if files:
            run = os.path.relpath(folder, log_dir)
            runs[run] = [e for path in sorted(files, key=_creation_order) for e in read(path)]
    return runs
