"""Step rate (images/s) of the custom loop vs Keras fit() at equal settings.

No feature cache (the custom loop runs the full model, as fit does), the same
model, optimizer, data stream (input_pipeline.train_batches over real photos
decoded once into memory), jit_compile=False, steps_per_execution=1.

For each (backbone, phase) both loops are built once and warmed up (tracing,
oneDNN primitive creation); then timed chunks of `--steps` steps alternate:
custom, fit, custom, fit, ... Each chunk is one `loop.fit(epochs=1,
steps_per_epoch=steps)` / `model.fit(epochs=1, steps_per_epoch=steps)` call,
timed from outside (so each includes its per-call overhead: iterator, hooks).

    python bench/step_rate.py [--backbones vgg16,mobilenet] [--phases head,finetune]
        [--image_size 64] [--batch_size 32] [--steps 12] [--repeats 5]
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

LOOPS = ("custom", "fit")


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="vgg16,mobilenet")
    parser.add_argument("--phases", default="head,finetune")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=256,
                        help="training photos (decoded once, kept in memory)")
    parser.add_argument("--steps", type=int, default=4, help="min steps per timed chunk")
    parser.add_argument("--chunk_seconds", type=float, default=3.0,
                        help="steps per chunk are calibrated to about this long")
    parser.add_argument("--warmup", type=int, default=2, help="untimed chunks per loop")
    parser.add_argument("--repeats", type=int, default=10, help="timed chunks per loop")
    parser.add_argument("--mobilenet_weights", default=common.DEFAULT_MOBILENET_WEIGHTS)
    parser.add_argument("--backbone", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_config(args, backbone, phase, workdir):
    from tapefit.flags.config import Config
    weights = args.mobilenet_weights if backbone == "mobilenet" else "none"
    return Config(phase=phase, loop="custom", workdir=workdir, overwrite=True,
                  backbone=backbone, alpha=0.25 if backbone == "mobilenet" else 1.0,
                  weights=weights, image_size=args.image_size, data_dir=args.data_dir,
                  max_examples_per_split=args.examples, batch_size=args.batch_size,
                  feature_cache="off", tensorboard=False, verbose=0)


def load_photos(cfg):
    """The train split, decoded and resized once, as a dataset over in-memory arrays."""
    import numpy as np
    import tensorflow as tf

    from tapefit import input_pipeline
    splits = input_pipeline.load_splits(cfg)
    xs, ys = [], []
    for x, y in splits.train.batch(256):
        xs.append(x.numpy())
        ys.append(y.numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    return tf.data.Dataset.from_tensor_slices((x, y)), len(x), len(splits.class_names)


def images_in_first_steps(num_examples, batch_size, steps):
    """Images in the first `steps` batches of train_batches' stream (partial last batches)."""
    per_epoch = [min(batch_size, num_examples - i) for i in range(0, num_examples, batch_size)]
    return sum(per_epoch[i % len(per_epoch)] for i in range(steps))


def tracing_count(fn):
    getter = getattr(fn, "experimental_get_tracing_count", None)
    return getter() if getter else None


def measure(args, backbone, phase, loops):
    """{loop: [images/s per timed chunk]} plus tracing counts; loops interleaved.

    A chunk's rate is timed from on_epoch_begin to on_epoch_end (a hook of each
    loop), so it leaves out the per-call iterator teardown, which in TF 2.21
    can stall for a random fraction of a second or more (see bench/README.md);
    `call_rates` time the whole call, teardown included.
    """
    import keras

    from tapefit import callbacks as callbacks_module
    from tapefit import input_pipeline
    from tapefit.loops import train_lib
    from tapefit.loops.optim.optimizers import make_optimizer
    from tapefit.loops.training.custom import CustomLoop
    from tapefit.loops.training.strategy import make_strategy

    cfg = make_config(args, backbone, phase, common.fresh_workdir("step"))
    ds, n, num_classes = load_photos(cfg)
    data, _ = input_pipeline.train_batches(ds, n, cfg.batch_size, cfg.seed)
    strategy = make_strategy(cfg.strategy)
    runners = {}
    if "custom" in loops:
        model = train_lib.build(cfg, strategy, num_classes)
        custom = CustomLoop(model, make_optimizer(cfg), strategy, jit_compile=cfg.jit_compile,
                            steps_per_execution=cfg.steps_per_execution)

        def run_custom(steps=args.steps):
            clock = common.EpochClock()
            custom.fit(data, epochs=1, steps_per_epoch=steps,
                       callbacks=clock.hooks(callbacks_module))
            return clock

        runners["custom"] = (run_custom, lambda: tracing_count(custom._train_function))
    if "fit" in loops:
        model_f = train_lib.build(cfg, strategy, num_classes)
        model_f.compile(optimizer=make_optimizer(cfg), loss=train_lib.loss_fn(),
                        metrics=["accuracy"], jit_compile=cfg.jit_compile,
                        steps_per_execution=cfg.steps_per_execution)

        def run_fit(steps=args.steps):
            clock = common.EpochClock()
            model_f.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0,
                        callbacks=clock.hooks(keras.callbacks))
            return clock

        runners["fit"] = (run_fit, lambda: tracing_count(model_f.train_function))
    for _ in range(args.warmup):
        for loop in loops:
            runners[loop][0]()
    warm_traces = {loop: runners[loop][1]() for loop in loops}
    steps = calibrate(args, runners[loops[0]][0])
    images = images_in_first_steps(n, cfg.batch_size, steps)
    result = {loop: [] for loop in loops}
    cpu = {loop: [] for loop in loops}
    call = {loop: [] for loop in loops}
    loads = []
    for repeat, loop in common.interleaved(loops, args.repeats):
        start = common.now()
        clock = runners[loop][0](steps)
        call_seconds = common.now() - start
        seconds, cpu_seconds = clock.epoch_seconds[0], clock.epoch_cpu_seconds[0]
        result[loop].append(images / seconds)
        cpu[loop].append(images / cpu_seconds)
        call[loop].append(images / call_seconds)
        loads.append(common.loadavg())
        common.log(f"{backbone}/{phase} {loop} #{repeat}: {images / seconds:.1f} img/s, "
                   f"{images / cpu_seconds:.1f} img/CPU-s, whole call {call_seconds:.2f}s "
                   f"(epoch {seconds:.2f}s)")
    traces = {loop: {"after_warmup": warm_traces[loop], "at_end": runners[loop][1]()}
              for loop in loops}
    return {"rates": result, "cpu_rates": cpu, "call_rates": call, "traces": traces,
            "loadavg": loads,
            "steps_per_chunk": steps, "images_per_chunk": images}


def calibrate(args, run):
    """Steps per chunk so that one chunk takes about --chunk_seconds (at least --steps)."""
    start = common.now()
    run(args.steps)
    per_step = (common.now() - start) / args.steps
    return max(args.steps, math.ceil(args.chunk_seconds / per_step))


def main():
    args = parse_args()
    args.data_dir = common.check_data_dir(args.data_dir)
    if "mobilenet" in args.backbones:
        args.mobilenet_weights = common.check_file(args.mobilenet_weights,
                                                   "--mobilenet_weights")
    common.quiet_tf()
    if args.worker:  # One loop alone, for its peak RSS.
        out = measure(args, args.backbone, args.phase, (args.worker,))
        common.emit(out)
        return
    configs = [(b, p) for b in args.backbones.split(",") for p in args.phases.split(",")]
    results, rows = {}, []
    for backbone, phase in configs:
        common.log(f"timing {backbone}/{phase}")
        out = measure(args, backbone, phase, LOOPS)
        rss = {}
        if not args.no_memory:
            for loop in LOOPS:
                worker_args = common.passthrough_args(sys.argv[1:]) + [
                    "--worker", loop, "--backbone", backbone, "--phase", phase,
                    "--repeats", "2", "--data_dir", args.data_dir]
                rss[loop] = common.run_worker(os.path.abspath(__file__), worker_args)
                common.log(f"{backbone}/{phase} {loop}: max RSS {rss[loop]['max_rss_mib']:.0f} MiB")
        out["worker"] = rss
        results[f"{backbone}/{phase}"] = out
        custom, fit = out["rates"]["custom"], out["rates"]["fit"]
        paired = [c / f for c, f in zip(custom, fit)]
        cpu_c, cpu_f = out["cpu_rates"]["custom"], out["cpu_rates"]["fit"]
        call_c, call_f = out["call_rates"]["custom"], out["call_rates"]["fit"]
        rows.append([
            backbone, phase,
            f"{common.median(custom):.1f}", common.spread(custom),
            f"{common.median(fit):.1f}", common.spread(fit),
            f"{common.median(custom) / common.median(fit):.3f}",
            f"{common.median(paired):.3f}",
            f"{common.median(cpu_c):.1f}/{common.median(cpu_f):.1f}",
            f"{common.median(cpu_c) / common.median(cpu_f):.3f}",
            f"{common.median(call_c) / common.median(call_f):.3f}",
            out["steps_per_chunk"],
            "/".join(f"{rss[l]['max_rss_mib']:.0f}" if l in rss else "-" for l in LOOPS),
            out["traces"]["custom"]["at_end"],
        ])
    text = (f"image {args.image_size}², batch {args.batch_size}, {args.examples} photos in "
            f"memory, chunks of ~{args.chunk_seconds:g} s, {args.warmup} warm-up + "
            f"{args.repeats} timed chunks per loop, interleaved custom/fit; no feature cache; "
            "VGG16 weights=none, MobileNet(0.25) real weights. img/s: on_epoch_begin to "
            "on_epoch_end of each one-epoch call; img/CPU-s: the same span in process CPU "
            "time; whole-call ratio: the calls timed from outside (iterator setup and "
            "teardown included).\n\n")
    text += common.table(
        ["backbone", "phase", "custom img/s (median)", "custom range", "fit img/s (median)",
         "fit range", "ratio custom/fit (medians)", "ratio (median of pairs)",
         "img/CPU-s custom/fit", "CPU ratio", "whole-call ratio", "steps/chunk",
         "max RSS MiB custom/fit",
         "custom traces"], rows)
    common.report("step_rate: custom loop vs fit()", text, results, args.json)


if __name__ == "__main__":
    main()
