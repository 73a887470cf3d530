"""The frozen feature pass inside a tf.data map vs as a plain call in the main thread.

Why `loops/caches/feature_cache.py` runs the frozen prefix in the main thread: a function
given to `Dataset.map` (or run by `from_generator`'s thread) runs its ops on one
intra-op thread (tf.data's default) and without grappler's fusions, and on this
2-core VM its wall time also jumps between ~1x and ~4x of the main-thread time
from one pass to the next. One process, weights none, 256 random images at 128²,
batch 32, passes interleaved:

    python bench/feature_pass.py [--backbone resnet50] [--repeats 3]

Variants: `main` (the tf.function called batch by batch in this thread, as
tapefit does), `map` (`Dataset.map`, as tapefit did), `map_intra` (`map` with
`threading.max_intra_op_parallelism` = the core count), `generator`
(`Dataset.from_generator` calling the tf.function). Wall and CPU seconds per pass.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine_line, quiet_tf  # noqa: E402

BACKBONES = {"resnet50": "ResNet50", "vgg16": "VGG16", "efficientnet_b0": "EfficientNetB0",
             "mobilenet_v2": "MobileNetV2"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50", choices=sorted(BACKBONES))
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet_tf()
    import keras
    import numpy as np
    import tensorflow as tf

    size = args.image_size
    model = getattr(keras.applications, BACKBONES[args.backbone])(
        weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg")
    forward = tf.function(lambda x: model(x, training=False))
    images = np.random.default_rng(0).integers(0, 255, (args.images, size, size, 3), np.uint8)
    batches = tf.data.Dataset.from_tensor_slices(images).batch(args.batch_size)

    def main_thread():
        for b in batches.prefetch(1):
            forward(tf.cast(b, tf.float32)).numpy()

    def mapped(options=None):
        ds = batches.map(lambda b: forward(tf.cast(b, tf.float32)))
        for _ in ds.with_options(options) if options else ds:
            pass

    def generator():
        def batches_out():
            for b in batches.prefetch(1):
                yield forward(tf.cast(b, tf.float32))
        spec = tf.TensorSpec([None, model.output.shape[-1]], tf.float32)
        for _ in tf.data.Dataset.from_generator(batches_out, output_signature=spec):
            pass

    intra = tf.data.Options()
    intra.threading.max_intra_op_parallelism = os.cpu_count() or 1
    variants = {"main": main_thread, "map": mapped, "map_intra": lambda: mapped(intra),
                "generator": generator}
    for fn in variants.values():  # Warm-up: traces, oneDNN primitives.
        fn()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            print(f"{name}: {times[name][-1][0]:.2f} s wall, {times[name][-1][1]:.2f} s CPU",
                  file=sys.stderr, flush=True)
    print(machine_line())
    print(f"\n{args.backbone} (weights none) {size}², {args.images} images, batch "
          f"{args.batch_size}, {args.repeats} interleaved passes per variant\n")
    print("| variant | wall s per pass (each) | median wall s | median CPU s | "
          "main/variant wall |")
    print("|---|---|---|---|---|")
    main_wall = statistics.median(w for w, _ in times["main"])
    for name, samples in times.items():
        wall = statistics.median(w for w, _ in samples)
        print(f"| {name} | {', '.join(f'{w:.2f}' for w, _ in samples)} | {wall:.2f} | "
              f"{statistics.median(c for _, c in samples):.2f} | {main_wall / wall:.2f} |")


if __name__ == "__main__":
    main()
