"""Learning quality of `--recipe=classic` vs `--recipe=tuned` (issue 13) on real photos.

MobileNet(alpha=0.25) with its real ImageNet weights at 160², head 3 epochs then
finetune 3 epochs (the backbone's default `--unfreeze_from`), per seed:

    select: each candidate setting on the train/validation photos only (the
            validation split carved from train/), ranked by the finetune phase's
            best val_accuracy (mean over --select_seeds);
    final:  classic and tuned (flags.config.RECIPES["tuned"], or --tuned=CANDIDATE)
            over --seeds, both loops where the recipe allows (--loops), each
            evaluated once on test/ (2000 photos, never seen before).

    python bench/recipes.py --stage=select            # choose on validation
    python bench/recipes.py --stage=final             # test accuracy, classic vs tuned

Flags are resolved as on the command line (`flags.config.apply_recipe`: the recipe
fills every flag the bench does not set). A benchmark, not a test: it asserts
nothing. Progress to stderr, the tables to stdout (markdown).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    DEFAULT_DATA_DIR,
    DEFAULT_MOBILENET_WEIGHTS,
    base_parser,
    check_data_dir,
    check_file,
    fresh_workdir,
    machine_line,
    quiet_tf,
)

# Candidates for the tuned recipe: {phase: flags}; "classic" is every flag at its default.
CANDIDATES = {
    "classic": {},
    "one_cycle": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 3e-3},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3},
    },
    "one_cycle_smooth": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 3e-3, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3,
                     "label_smoothing": 0.1},
    },
    "tuned_v1": {  # flags.config.RECIPES["tuned"] as first written.
        "head": {"lr_schedule": "one_cycle", "learning_rate": 3e-3, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3,
                     "label_smoothing": 0.1, "layer_lr_decay": 0.7, "weight_decay": 0.01},
    },
    "tuned_bn": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 3e-3, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3, "train_bn": True,
                     "label_smoothing": 0.1, "layer_lr_decay": 0.7, "weight_decay": 0.01},
    },
    "tuned_flip": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 3e-3, "label_smoothing": 0.1,
                 "augment": "flip"},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3, "augment": "flip",
                     "label_smoothing": 0.1, "layer_lr_decay": 0.7, "weight_decay": 0.01},
    },
    "tuned_deep": {  # Unfreeze further down, the lower blocks at decayed rates.
        "head": {"lr_schedule": "one_cycle", "learning_rate": 3e-3, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3,
                     "unfreeze_from": "block_9", "label_smoothing": 0.1,
                     "layer_lr_decay": 0.7, "weight_decay": 0.01},
    },
    "tuned_deeper": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 3e-3, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3,
                     "unfreeze_from": "block_6", "label_smoothing": 0.1,
                     "layer_lr_decay": 0.8, "weight_decay": 0.01},
    },
    "tuned_ema": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 3e-3, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3, "ema": 0.99,
                     "label_smoothing": 0.1, "layer_lr_decay": 0.7, "weight_decay": 0.01},
    },
    "tuned_lr2": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 3e-3, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 2e-3,
                     "label_smoothing": 0.1, "layer_lr_decay": 0.7, "weight_decay": 0.01},
    },
    "tuned_hot_head": {  # tuned_v1 with a hotter head phase.
        "head": {"lr_schedule": "one_cycle", "learning_rate": 1e-2, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3,
                     "label_smoothing": 0.1, "layer_lr_decay": 0.7, "weight_decay": 0.01},
    },
    "tuned_hot_head_wd": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 1e-2, "label_smoothing": 0.1,
                 "weight_decay": 0.01},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3,
                     "label_smoothing": 0.1, "layer_lr_decay": 0.7, "weight_decay": 0.05},
    },
    "tuned_hot": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 1e-2, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 2e-3,
                     "label_smoothing": 0.1, "layer_lr_decay": 0.7, "weight_decay": 0.01},
    },
}


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--weights", default=DEFAULT_MOBILENET_WEIGHTS)
    parser.add_argument("--stage", default="final", choices=("select", "final"))
    parser.add_argument("--candidates",
                        default="classic,tuned_v1,tuned_bn,tuned_flip,tuned_hot")
    parser.add_argument("--select_seeds", default="0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--loops", default="custom")
    parser.add_argument("--tuned", default="recipe",
                        help="final stage: 'recipe' (--recipe=tuned) or a candidate name")
    parser.add_argument("--image_size", type=int, default=160)
    parser.add_argument("--head_epochs", type=int, default=3)
    parser.add_argument("--finetune_epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_examples_per_split", type=int, default=0,
                        help="a quick try of the script (0: every photo)")
    parser.add_argument("--workdir", default=None)
    return parser.parse_args()


def config(args, workdir, phase, seed, loop, recipe="classic", flags=None):
    """The Config the command line would give: bench flags explicit, the recipe the rest."""
    from tapefit.flags.config import Config, apply_recipe
    epochs = args.head_epochs if phase == "head" else args.finetune_epochs
    explicit = dict(phase=phase, loop=loop, workdir=workdir, backbone="mobilenet", alpha=0.25,
                    weights=args.weights, image_size=args.image_size,
                    data_dir=args.data_dir, batch_size=args.batch_size, epochs=epochs,
                    seed=seed, verbose=0, backup=False, recipe=recipe,
                    max_examples_per_split=args.max_examples_per_split,
                    **((flags or {}).get(phase, {}) if phase != "evaluate" else {}))
    values = apply_recipe({**Config().to_dict(), **explicit}, explicit=set(explicit))
    return Config(**values)


def run_pair(args, seed, loop, recipe="classic", flags=None, test=False) -> dict:
    """head + finetune (+ evaluate on test/): val/test accuracy and wall time."""
    import keras

    from tapefit.loops import phases
    workdir = fresh_workdir("recipes")
    if args.workdir:
        workdir = os.path.join(args.workdir, f"{recipe}-{loop}-s{seed}-{time.time_ns()}")
    start = time.perf_counter()
    out = {}
    for phase in ("head", "finetune"):
        cfg = config(args, workdir, phase, seed, loop, recipe, flags)
        summary = phases.run(cfg)
        keras.backend.clear_session()
        history = _history(summary)
        out[f"{phase}_val_accuracy"] = max(h.get("val_accuracy", math.nan) for h in history)
        out[f"{phase}_learning_rate"] = cfg.learning_rate
        if phase == "finetune":
            out["resolved"] = {k: v for k, v in cfg.to_dict().items()
                               if v != getattr(type(cfg)(), k) and k not in (
                                   "workdir", "data_dir", "weights")}
    if not test:  # Selection: the best weights on the validation photos, with flip TTA.
        out.update(validation_with_tta(args, workdir, config(args, workdir, "finetune", seed,
                                                              loop, recipe, flags)))
    if test:
        result = phases.run(config(args, workdir, "evaluate", seed, loop))
        keras.backend.clear_session()
        out["test_accuracy"] = result["accuracy"]
        out["test_examples"] = result["test_examples"]
    out["seconds"] = time.perf_counter() - start
    return out


def validation_with_tta(args, workdir, cfg) -> dict:
    """Accuracy of the finetune phase's best weights on the validation split, as
    trained and with `--tta=flip` (the test photos stay unseen)."""
    import keras

    from tapefit import input_pipeline
    from tapefit.loops import train_lib
    from tapefit.loops.optim.optimizers import make_optimizer
    from tapefit.loops.training.custom import CustomLoop
    from tapefit.model.augment import with_tta
    model, trained, _, _ = train_lib.load_trained_model(workdir)
    batches = input_pipeline.eval_batches(input_pipeline.load_splits(cfg).validation,
                                          cfg.batch_size)
    out = {}
    for name, net in (("val_accuracy_best", model), ("val_accuracy_tta", with_tta(model, "flip"))):
        out[name] = CustomLoop(net, make_optimizer(trained)).evaluate(batches)["accuracy"]
    keras.backend.clear_session()
    return out


def _history(summary):
    path = summary["files"].get("log")
    if path and os.path.exists(path):
        import csv
        with open(path) as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return [summary["last_epoch_logs"]]


def mean_std(values):
    if len(values) < 2:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def main():
    args = parse_args()
    args.data_dir = check_data_dir(args.data_dir or DEFAULT_DATA_DIR)
    args.weights = check_file(os.path.abspath(args.weights), "--weights")
    quiet_tf()
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    print(machine_line())
    results = []
    if args.stage == "select":
        seeds = [int(s) for s in args.select_seeds.split(",")]
        print("\n| candidate | seed | head best val_acc | finetune best val_acc | "
              "with flip TTA | s |")
        print("|---|---|---|---|---|---|")
        for name in args.candidates.split(","):
            for seed in seeds:
                r = run_pair(args, seed, "custom", flags=CANDIDATES[name])
                results.append({"candidate": name, "seed": seed, **r})
                print(f"| {name} | {seed} | {100 * r['head_val_accuracy']:.2f} | "
                      f"{100 * r['finetune_val_accuracy']:.2f} | "
                      f"{100 * r['val_accuracy_tta']:.2f} | {r['seconds']:.0f} |",
                      flush=True)
        print("\n| candidate | mean finetune best val_acc | with flip TTA |\n|---|---|---|")
        for name in args.candidates.split(","):
            rows = [r for r in results if r["candidate"] == name]
            print(f"| {name} | {mean_std([r['finetune_val_accuracy'] for r in rows])} | "
                  f"{mean_std([r['val_accuracy_tta'] for r in rows])} |")
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        tuned = ("tuned", None) if args.tuned == "recipe" else ("classic",
                                                                 CANDIDATES[args.tuned])
        variants = {"classic": ("classic", None), "tuned": tuned}
        print("\n| recipe | loop | seed | finetune best val_acc | test accuracy | s |")
        print("|---|---|---|---|---|---|")
        for loop in args.loops.split(","):
            for seed in seeds:
                for name, (recipe, flags) in variants.items():  # Interleaved.
                    r = run_pair(args, seed, loop, recipe, flags, test=True)
                    results.append({"recipe": name, "loop": loop, "seed": seed, **r})
                    print(f"| {name} | {loop} | {seed} | {100 * r['finetune_val_accuracy']:.2f}"
                          f" | {100 * r['test_accuracy']:.2f} | {r['seconds']:.0f} |",
                          flush=True)
        print("\n| recipe | loop | test accuracy, mean ± std (%) | per seed |\n|---|---|---|---|")
        for loop in args.loops.split(","):
            for name in variants:
                values = [r["test_accuracy"] for r in results
                          if r["recipe"] == name and r["loop"] == loop]
                print(f"| {name} | {loop} | {mean_std(values)} | "
                      + ", ".join(f"{100 * v:.2f}" for v in values) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
