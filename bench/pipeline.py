"""Training throughput with the real input pipeline vs the same batches pre-loaded.

real: `input_pipeline.load_splits` over the image folder (JPEG decode, resize,
in-memory cache of the decoded split, shuffle per epoch, batch, cast,
prefetch) → `input_pipeline.train_batches`, made afresh for every timed run,
so its epoch 1 decodes every photo and later epochs read the decoded cache.

preloaded: the very same batch sequence (same photos, order and values),
materialised once as float32 tensors and fed by
`tf.data.Dataset.from_tensor_slices` (nothing left to compute but the step).

Both are trained by the same `loops.training.custom.CustomLoop` (or `--loop fit`,
`model.fit`) for `--epochs` epochs per run, no validation; runs alternate
real, preloaded, real, preloaded, ... after one untimed warm-up run each.

    python bench/pipeline.py [--backbone mobilenet] [--image_size 128]
        [--examples 1024] [--epochs 4] [--repeats 5] [--loop custom]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

VARIANTS = ("real", "preloaded")


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--phase", default="head")
    parser.add_argument("--loop", default="custom", choices=("custom", "fit"))
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=1024,
                        help="training photos (a multiple of --batch_size)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mobilenet_weights", default=common.DEFAULT_MOBILENET_WEIGHTS)
    parser.add_argument("--no_input_only", dest="input_only", action="store_false",
                        help="skip timing the input pipelines alone (no training)")
    parser.add_argument("--memory_repeats", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_config(args, workdir):
    from tapefit.flags.config import Config
    mobilenet = args.backbone == "mobilenet"
    return Config(phase=args.phase, loop=args.loop, workdir=workdir, overwrite=True,
                  backbone=args.backbone, alpha=0.25 if mobilenet else 1.0,
                  weights=args.mobilenet_weights if mobilenet else "none",
                  image_size=args.image_size, data_dir=args.data_dir,
                  max_examples_per_split=args.examples, batch_size=args.batch_size,
                  feature_cache="off", tensorboard=False, verbose=0)


def real_batches(cfg):
    """A fresh real pipeline: (batches, steps_per_epoch, num_examples, num_classes)."""
    from tapefit import input_pipeline
    splits = input_pipeline.load_splits(cfg)
    n = splits.sizes["train"]
    data, steps = input_pipeline.train_batches(splits.train, n, cfg.batch_size, cfg.seed)
    return data, steps, n, len(splits.class_names)


def preloaded_batches(cfg, epochs):
    """The real pipeline's first `epochs` epochs of batches, materialised in memory."""
    import tensorflow as tf
    data, steps, n, _ = real_batches(cfg)
    if n % cfg.batch_size:
        sys.exit(f"bench: {n} training photos is not a multiple of --batch_size="
                 f"{cfg.batch_size}; pass --examples=N*{cfg.batch_size}")
    images, labels = [], []
    for x, y in data.take(steps * epochs):
        images.append(x)
        labels.append(y)
    return tf.data.Dataset.from_tensor_slices((tf.stack(images), tf.stack(labels)))


class Trainer:
    """One model trained by one loop; `run(data)` returns epoch wall times."""

    def __init__(self, cfg, num_classes):
        from tapefit.loops import train_lib
        from tapefit.loops.optim.optimizers import make_optimizer
        from tapefit.loops.training.custom import CustomLoop
        from tapefit.loops.training.strategy import make_strategy
        strategy = make_strategy(cfg.strategy)
        self.cfg = cfg
        self.model = train_lib.build(cfg, strategy, num_classes)
        if cfg.loop == "custom":
            self.loop = CustomLoop(self.model, make_optimizer(cfg), strategy,
                                   jit_compile=cfg.jit_compile,
                                   steps_per_execution=cfg.steps_per_execution)
        else:
            self.model.compile(optimizer=make_optimizer(cfg), loss=train_lib.loss_fn(),
                               metrics=["accuracy"], jit_compile=cfg.jit_compile,
                               steps_per_execution=cfg.steps_per_execution)

    def run(self, data, epochs, steps):
        clock = common.EpochClock()
        if self.cfg.loop == "custom":
            from tapefit import callbacks
            self.loop.fit(data, epochs=epochs, steps_per_epoch=steps,
                          callbacks=clock.hooks(callbacks))
        else:
            import keras
            self.model.fit(data, epochs=epochs, steps_per_epoch=steps, shuffle=False,
                           verbose=0, callbacks=clock.hooks(keras.callbacks))
        return clock.epoch_seconds, clock.epoch_cpu_seconds

    def tracing_count(self):
        if self.cfg.loop == "custom":
            return self.loop._train_function.experimental_get_tracing_count()
        return None


def measure(args, variants, repeats):
    cfg = make_config(args, common.fresh_workdir("pipeline"))
    _, steps, n, num_classes = real_batches(cfg)
    preloaded = preloaded_batches(cfg, args.epochs) if "preloaded" in variants else None
    trainers = {v: Trainer(cfg, num_classes) for v in variants}

    def data_for(variant):
        return real_batches(cfg)[0] if variant == "real" else preloaded

    for variant in variants:  # Warm-up: tracing, oneDNN primitives, page cache.
        trainers[variant].run(data_for(variant), 1, steps)
    epochs = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    for repeat, variant in common.interleaved(variants, repeats):
        seconds, cpu_seconds = trainers[variant].run(data_for(variant), args.epochs, steps)
        epochs[variant].append(seconds)
        cpu[variant].append(cpu_seconds)
        common.log(f"{variant} #{repeat}: epochs " + " ".join(f"{s:.2f}" for s in seconds)
                   + f" s ({n} images each)")
    # The input pipelines alone: what they cost without any training step.
    input_epochs = {v: [] for v in variants}
    input_cpu = {v: [] for v in variants}
    for repeat, variant in common.interleaved(variants, repeats if args.input_only else 0):
        seconds, cpu_seconds = drain(data_for(variant), args.epochs, steps)
        input_epochs[variant].append(seconds)
        input_cpu[variant].append(cpu_seconds)
        common.log(f"{variant} input only #{repeat}: epochs "
                   + " ".join(f"{s:.2f}" for s in seconds) + " s")
    return {"epoch_s": epochs, "epoch_cpu_s": cpu, "input_only_epoch_s": input_epochs,
            "input_only_epoch_cpu_s": input_cpu, "examples": n, "steps_per_epoch": steps,
            "traces": {v: trainers[v].tracing_count() for v in variants}}


def drain(data, epochs, steps):
    """Iterates `epochs` epochs of batches without training: (wall s, CPU s) per epoch."""
    import time
    iterator = iter(data)
    seconds, cpu_seconds = [], []
    for _ in range(epochs):
        start, start_cpu = common.now(), time.process_time()
        for _ in range(steps):
            next(iterator)
        seconds.append(common.now() - start)
        cpu_seconds.append(time.process_time() - start_cpu)
    return seconds, cpu_seconds


def main():
    args = parse_args()
    args.data_dir = common.check_data_dir(args.data_dir)
    if args.backbone == "mobilenet":
        args.mobilenet_weights = common.check_file(args.mobilenet_weights,
                                                   "--mobilenet_weights")
    common.quiet_tf()
    if args.worker:
        common.emit(measure(args, (args.worker,), args.memory_repeats))
        return
    common.log("timing real vs preloaded ...")
    out = measure(args, VARIANTS, args.repeats)
    rss = {}
    if not args.no_memory:
        passthrough = common.passthrough_args(sys.argv[1:])
        for variant in VARIANTS:
            rss[variant] = common.run_worker(
                os.path.abspath(__file__),
                passthrough + ["--worker", variant, "--data_dir", args.data_dir,
                               "--no_input_only"])
            common.log(f"{variant}: max RSS {rss[variant]['max_rss_mib']:.0f} MiB")
    n = out["examples"]

    def rates(epoch_s, epoch_cpu_s):
        return {
            "epoch1": [n / r[0] for r in epoch_s],
            "steady": [n / s for r in epoch_s for s in r[1:]],
            "overall": [n * len(r) / sum(r) for r in epoch_s],
            "cpu1": [1e3 * r[0] / n for r in epoch_cpu_s],
            "cpu_steady": [1e3 * s / n for r in epoch_cpu_s for s in r[1:]],
        }

    train = {v: rates(out["epoch_s"][v], out["epoch_cpu_s"][v]) for v in VARIANTS}
    rows = []
    for variant in VARIANTS:
        r = train[variant]
        rows.append([variant] + [f"{common.median(r[k]):.1f}" for k in
                                 ("epoch1", "steady", "overall")]
                    + [common.spread(r["steady"]), f"{common.median(r['cpu1']):.2f}",
                       f"{common.median(r['cpu_steady']):.2f}",
                       f"{rss[variant]['max_rss_mib']:.0f}" if rss else "-",
                       out["traces"][variant]])
    ratio = {k: common.median(train["real"][k]) / common.median(train["preloaded"][k])
             for k in ("epoch1", "steady", "overall")}
    paired_overall = [r / p for r, p in zip(train["real"]["overall"],
                                            train["preloaded"]["overall"])]
    cpu_ratio = {k: common.median(train["preloaded"][k]) / common.median(train["real"][k])
                 for k in ("cpu1", "cpu_steady")}
    rows.append(["ratio real/preloaded", f"{ratio['epoch1']:.3f}", f"{ratio['steady']:.3f}",
                 f"{ratio['overall']:.3f} (pairs {common.median(paired_overall):.3f})", "",
                 f"{cpu_ratio['cpu1']:.3f}", f"{cpu_ratio['cpu_steady']:.3f}", "", ""])
    if args.input_only:
        for variant in VARIANTS:
            r = rates(out["input_only_epoch_s"][variant], out["input_only_epoch_cpu_s"][variant])
            rows.append([f"{variant}, input only"] + [f"{common.median(r[k]):.1f}" for k in
                                                      ("epoch1", "steady", "overall")]
                        + [common.spread(r["steady"]), f"{common.median(r['cpu1']):.2f}",
                           f"{common.median(r['cpu_steady']):.2f}", "", ""])
    weights = "alpha 0.25, real weights" if args.backbone == "mobilenet" else "weights=none"
    text = (f"{args.backbone} ({weights}) at {args.image_size}², {args.phase} phase, "
            f"{args.loop} loop, batch {args.batch_size}, {n} photos, {args.epochs} epochs per "
            f"run, {args.repeats} runs per variant interleaved (after 1 warm-up run each), "
            "no validation.\n\n")
    text += common.table(
        ["variant", "epoch 1 img/s", "epochs 2+ img/s", f"all {args.epochs} epochs img/s",
         "epochs 2+ range", "CPU ms/img epoch 1", "CPU ms/img epochs 2+", "max RSS MiB",
         "traces"], rows)
    text += ("\n\nCPU ms/img: CPU time of the whole process (all threads) per image; "
             "the ratio row gives preloaded/real for it (higher is better, like img/s). "
             "'input only' rows iterate the same batches with no training step.\n"
             "target: real/preloaded >= 0.95")
    common.report("pipeline: real input pipeline vs pre-loaded batches", text,
                  {"args": vars(args), "measure": out, "worker": rss, "rates": train},
                  args.json)


if __name__ == "__main__":
    main()
