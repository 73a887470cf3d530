"""Run by test_distribute.py in a fresh process: TF must split the CPU before it starts.

Trains the same tiny head phase under the default strategy and under
MirroredStrategy over 2 logical CPUs, for one loop, and prints the weight diff.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tapefit.loops.training.strategy import split_cpu  # noqa: E402

split_cpu(2)

import numpy as np  # noqa: E402

from tapefit.flags.config import Config  # noqa: E402
from tapefit.loops import phases, train_lib  # noqa: E402


def main(workdir, loop):
    cfg = Config(workdir=workdir, loop=loop, backbone="vgg16", weights="none",
                 image_size=32, dataset="synthetic", synthetic_examples=32, batch_size=16,
                 epochs=2, verbose=0, deterministic=True, dropout=0.0, learning_rate=1e-2,
                 feature_cache="off")
    results = {}
    for strategy in ("default", "mirrored"):
        trained = phases.train(
            cfg.replace(strategy=strategy), run_dir=os.path.join(workdir, strategy))
        model, logs = trained.model, trained.logs
        results[strategy] = (model.get_weights(), logs,
                             model.distribute_strategy.num_replicas_in_sync)
    (w1, logs1, _), (w2, logs2, replicas) = results["default"], results["mirrored"]
    print(json.dumps({
        "replicas": replicas,
        "max_abs_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2)),
        "max_weight": max(float(np.max(np.abs(a))) for a in w1),
        "max_abs_metric_diff": max(abs(logs1[k] - logs2[k]) for k in logs1),
        "weights_changed": any(
            not np.array_equal(a, b) for a, b in zip(w1, train_lib.build(
                cfg, train_lib.make_strategy("default"), 2).get_weights())),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
