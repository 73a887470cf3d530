"""bfloat16 vs float32 on this CPU: the frozen forward pass and a finetune train step.

* forward: the head phase's frozen prefix (everything up to the pooled features,
  what the feature cache runs once per image) in float32 vs the two bfloat16 copies
  `--feature_precision=bfloat16` can run (`loops.caches.feature_precision.forward`):
  every layer's dtype bfloat16 ("copy") and Keras' `mixed_bfloat16` policy ("policy",
  float32 weights cast per call; `BF16_HOW` says which the flag uses); also the
  relative difference of the features;
* train step: a finetune step (from `--unfreeze_from`, default the backbone's last
  block) of `loops.training.custom.CustomLoop` in float32 vs under the `mixed_bfloat16`
  policy (`--mixed_precision=mixed_bfloat16`).

Random images (weights none, except MobileNet's real file when given), batch 32;
variants alternate in timed chunks after a warm-up. Whether the CPU has native
bfloat16 (`avx512_bf16`/`amx_bf16` in /proc/cpuinfo) is printed with the table.

    python bench/bf16.py [--backbones vgg16,mobilenet] [--image_size 128]
        [--batch_size 32] [--repeats 3] [--parts forward,train]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="vgg16,mobilenet")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3, help="batches per timed chunk")
    parser.add_argument("--parts", default="forward,train")
    parser.add_argument("--mobilenet_weights", default=common.DEFAULT_MOBILENET_WEIGHTS)
    return parser.parse_args(argv)


def config(args, backbone, **changes):
    from tapefit.flags.config import Config
    mobilenet = backbone == "mobilenet"
    weights = "none"
    if mobilenet and os.path.isfile(args.mobilenet_weights):
        weights = os.path.abspath(args.mobilenet_weights)
    return Config(backbone=backbone, alpha=0.25 if mobilenet else 1.0, weights=weights,
                  image_size=args.image_size, batch_size=args.batch_size, **changes)


def timed(fn, calls):
    import time
    start, cpu = common.now(), time.process_time()
    for _ in range(calls):
        fn()
    return (common.now() - start) / calls, (time.process_time() - cpu) / calls


def forward(args, backbone, images):
    import keras
    import numpy as np

    from tapefit.loops.caches import feature_cache, feature_precision
    from tapefit.model import build_model, set_trainable
    cfg = config(args, backbone)
    keras.utils.set_random_seed(0)
    model = build_model(cfg, 2)
    set_trainable(model, "head")
    cut, _ = feature_cache.find_cut(model)
    fns = {"float32": feature_precision.forward(cut.prefix, "float32"),
           "bfloat16 copy": feature_precision.forward(cut.prefix, "bfloat16", "copy"),
           "mixed_bfloat16 policy": feature_precision.forward(cut.prefix, "bfloat16",
                                                              "policy")}
    out = {p: fn(images).numpy() for p, fn in fns.items()}  # Warm-up (tracing).
    difference = {p: float(np.linalg.norm(out[p] - out["float32"])
                           / np.linalg.norm(out["float32"])) for p in fns}
    seconds = {p: [] for p in fns}
    for _, p in common.interleaved(list(fns), args.repeats):
        seconds[p].append(timed(lambda p=p: fns[p](images).numpy(), args.calls))
    return seconds, difference


def train_step(args, backbone, images, labels):
    import keras
    import tensorflow as tf

    from tapefit.loops.optim.optimizers import make_optimizer
    from tapefit.loops.training.custom import CustomLoop
    from tapefit.model import build_model, set_trainable
    seconds = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            cfg = config(args, backbone, phase="finetune")
            keras.utils.set_random_seed(0)
            model = build_model(cfg, 2)
            set_trainable(model, "finetune", cfg.resolved_unfreeze_from)
            loop = CustomLoop(model, make_optimizer(cfg))
            data = tf.data.Dataset.from_tensors((images, labels)).repeat()
            iterator = iter(data)
            loop._train_function(iterator, tf.constant(1))  # Warm-up (tracing).
            seconds[policy] = []
            for _ in range(args.repeats):
                seconds[policy].append(timed(
                    lambda loop=loop, iterator=iterator: loop._train_function(
                        iterator, tf.constant(1))["loss"].numpy(), args.calls))
        finally:
            keras.mixed_precision.set_global_policy("float32")
    return seconds


def rows_of(backbone, what, seconds, n, difference=None):
    """One row per precision: its rate, its rate over float32's, CPU per image."""
    rate = {p: n / common.median([s for s, _ in v]) for p, v in seconds.items()}
    rows = []
    for p, v in seconds.items():
        cpu = common.median([c for _, c in v])
        wall = common.median([s for s, _ in v])
        rows.append([backbone, what, p, f"{rate[p]:.1f}", f"{rate[p] / rate['float32']:.2f}",
                     f"{1e3 * cpu / n:.2f}", f"{cpu / wall:.2f}",
                     f"{difference[p]:.1e}" if difference and p != "float32" else ""])
    return rows


def main():
    args = parse_args()
    common.quiet_tf()
    import numpy as np

    from tapefit.loops.caches import feature_precision
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch_size, args.image_size, args.image_size, 3)
                         ).astype("float32")
    labels = rng.integers(0, 2, args.batch_size).astype("int32")
    parts = args.parts.split(",")
    rows, raw = [], {}
    n = args.batch_size
    for backbone in args.backbones.split(","):
        if "forward" in parts:
            seconds, difference = forward(args, backbone, images)
            raw[f"{backbone} forward"] = {"seconds": seconds, "difference": difference}
            rows += rows_of(backbone, "frozen forward (head prefix)", seconds, n, difference)
            common.log(f"{backbone} forward: {rows[-3:]}")
        if "train" in parts:
            seconds = train_step(args, backbone, images, labels)
            raw[f"{backbone} train"] = seconds
            rows += rows_of(backbone, "finetune train step", seconds, n)
            common.log(f"{backbone} train: {rows[-2:]}")
    native, why = feature_precision.native_bf16()
    why += ("; --feature_precision=auto probes here" if native
            else "; --feature_precision=auto is float32 here without probing")
    why += f"; --feature_precision=bfloat16 runs the {feature_precision.BF16_HOW}"
    text = (f"{args.image_size}², batch {n}, random images, {args.repeats} chunks of "
            f"{args.calls} batches per variant after a warm-up; {why}.\n\n")
    text += common.table(["backbone", "what", "precision", "img/s", "vs float32",
                          "CPU ms/img", "cores (CPU/wall)", "features rel. diff"], rows)
    common.report("bf16: bfloat16 vs float32", text, {"args": vars(args), "raw": raw},
                  args.json)


if __name__ == "__main__":
    main()
