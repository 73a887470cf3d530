"""Iterator teardown stalls: a 10-epoch head run with validation, autotune model on vs off.

Destroying a `tf.data` iterator whose pipeline the autotuning model thread tunes
can block until that thread's current wait ends (bench/README.md). Both loops
destroy the validation iterator every epoch and the training iterator at the end
of the run. `input_pipeline.batching.AUTOTUNE_MODEL` switches the model thread for
the batches we make (False since this benchmark; True was the old behaviour).

Each run is one `phases.train(cfg)` call in a fresh child process, runs
alternating on, off, on, off, ... Per run it records when each epoch, its last
training batch and its validation pass began and ended, and reports:

* `val_teardown`: `on_test_end` → `CustomLoop.evaluate` returned (the
  validation iterator is destroyed in between);
* `epoch_end_hooks`, `between_epochs`: the hooks' epoch-end work (checkpoint,
  CSV, backup) and `on_epoch_end` → next `on_epoch_begin`;
* `train_teardown`: `on_train_end` → `CustomLoop.fit` returned (the training
  iterator is destroyed), `final_save`: → `phases.train` returned;
* the longest teardown per run, and the whole run's wall time.

    python bench/stalls.py [--backbone mobilenet] [--epochs 10] [--examples 500]
        [--repeats 3]
"""
from __future__ import annotations

import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

VARIANTS = ("autotune_on", "autotune_off")


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--feature_cache", default="auto")
    parser.add_argument("--mobilenet_weights", default=common.DEFAULT_MOBILENET_WEIGHTS)
    return parser.parse_args(argv)


class Clock:
    """Timestamps of the hook calls of one run."""

    def __init__(self):
        self.events = []

    def hooks(self, module):
        def mark(name):
            return lambda *args, **kwargs: self.events.append((name, time.perf_counter()))
        return [module.LambdaCallback(
            on_train_begin=mark("train_begin"), on_epoch_begin=mark("epoch_begin"),
            on_train_batch_end=mark("batch_end"), on_test_begin=mark("test_begin"),
            on_test_end=mark("test_end"), on_epoch_end=mark("epoch_end"),
            on_train_end=mark("train_end"))]


KINDS = {("test_end", "evaluate_return"): "val_teardown",
         ("evaluate_return", "epoch_end"): "epoch_end_hooks",
         ("epoch_end", "epoch_begin"): "between_epochs",
         ("train_end", "fit_return"): "train_teardown",
         ("fit_return", "returned"): "final_save"}


def gaps(events):
    """{kind: [seconds, ...]} of the gaps between consecutive events named in KINDS."""
    out = {kind: [] for kind in KINDS.values()}
    for (before, t0), (name, t) in zip(events, events[1:]):
        kind = KINDS.get((before, name))
        if kind:
            out[kind].append(t - t0)
    return out


def instrument(clock):
    """Marks the returns of CustomLoop.evaluate (its iterator is gone) and .fit."""
    from tapefit.loops.training.custom import CustomLoop
    for name in ("evaluate", "fit"):
        original = getattr(CustomLoop, name)

        def wrapped(self, *args, _original=original, _name=name, **kwargs):
            result = _original(self, *args, **kwargs)
            clock.events.append((f"{_name}_return", time.perf_counter()))
            return result

        setattr(CustomLoop, name, wrapped)


def worker(args):
    from tapefit.flags.config import Config
    from tapefit.input_pipeline import batching
    from tapefit.loops import phases
    batching.AUTOTUNE_MODEL = args.worker == "autotune_on"
    workdir = common.fresh_workdir("stalls")
    mobilenet = args.backbone == "mobilenet"
    cfg = Config(loop="custom", workdir=workdir, overwrite=True, backbone=args.backbone,
                 alpha=0.25 if mobilenet else 1.0,
                 weights=args.mobilenet_weights if mobilenet else "none",
                 image_size=args.image_size, data_dir=args.data_dir,
                 max_examples_per_split=args.examples, batch_size=args.batch_size,
                 epochs=args.epochs, feature_cache=args.feature_cache, tensorboard=False,
                 image_cache="memory", verbose=0)
    clock = Clock()
    instrument(clock)
    start = time.perf_counter()
    try:
        phases.train(cfg, extra_hooks=clock.hooks)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    returned = time.perf_counter()
    clock.events.append(("returned", returned))
    epochs = [t for name, t in clock.events if name == "epoch_end"]
    common.emit({"total_s": returned - start, "gaps": gaps(clock.events),
                 "first_epoch_end_s": epochs[0] - start if epochs else None,
                 "loadavg_end": common.loadavg()})


def main():
    args = parse_args()
    args.data_dir = common.check_data_dir(args.data_dir)
    if args.backbone == "mobilenet":
        args.mobilenet_weights = common.check_file(args.mobilenet_weights,
                                                   "--mobilenet_weights")
    if args.worker:
        common.quiet_tf()
        worker(args)
        return
    passthrough = common.passthrough_args(sys.argv[1:])
    runs = {v: [] for v in VARIANTS}
    for repeat, variant in common.interleaved(VARIANTS, args.repeats):
        result = common.run_worker(os.path.abspath(__file__),
                                   passthrough + ["--worker", variant,
                                                  "--data_dir", args.data_dir])
        runs[variant].append(result)
        g = result["gaps"]
        common.log(f"{variant} #{repeat}: total {result['total_s']:.1f} s, val teardown "
                   + " ".join(f"{s:.2f}" for s in g["val_teardown"])
                   + f", train teardown {max(g['train_teardown'] or [0]):.2f} s")
    rows = []
    for variant in VARIANTS:
        rs = runs[variant]

        def worst(kind, rs=rs):
            return max(max(r["gaps"][kind] or [0.0]) for r in rs)

        def typical(kind, rs=rs):
            return common.median([s for r in rs for s in r["gaps"][kind]] or [0.0])

        teardown = ("val_teardown", "train_teardown")
        longest = [max(max(r["gaps"][k] or [0.0]) for k in teardown) for r in rs]
        rows.append([variant, len(rs), f"{common.median([r['total_s'] for r in rs]):.1f}",
                     common.spread([r["total_s"] for r in rs])]
                    + [f"{typical(k):.3f} / {worst(k):.2f}" for k in KINDS.values()]
                    + [" ".join(f"{s:.2f}" for s in longest)])
    weights = "alpha 0.25, real weights" if args.backbone == "mobilenet" else "weights=none"
    text = (f"{args.backbone} ({weights}) at {args.image_size}², head phase, custom "
            f"loop, {args.epochs} epochs with validation, batch {args.batch_size}, max "
            f"{args.examples} photos per split, feature_cache={args.feature_cache}, "
            f"image_cache=memory, TensorBoard off; one child process per run, interleaved."
            "\n\n")
    text += common.table(
        ["variant", "runs", "total s (median)", "total range"]
        + [f"{k} s (median / max)" for k in KINDS.values()]
        + ["longest teardown per run s"], rows)
    text += ("\n\nval_teardown: on_test_end → CustomLoop.evaluate returned (its iterator "
             "destroyed); epoch_end_hooks: → on_epoch_end of the last hook (checkpoint, CSV, "
             "backup); train_teardown: on_train_end → CustomLoop.fit returned (the training "
             "iterator destroyed); final_save: → phases.train returned.\n"
             "target: no teardown over 1 s")
    common.report("stalls: iterator teardown, autotune model on vs off", text,
                  {"args": vars(args), "runs": runs}, args.json)


if __name__ == "__main__":
    main()
