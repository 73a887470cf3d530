"""`--feature_precision`: the feature cache's frozen forward pass in float32 or bfloat16.

The cached features are always stored as float32; only the one-time pass through
the frozen prefix changes. `bfloat16` runs a copy of the prefix whose layers
compute in bfloat16 (`BF16_HOW`: every layer's dtype bfloat16, "copy"; Keras'
`mixed_bfloat16` policy, "policy", casts float32 weights at every call and measured
0.85-0.97x of the copy's speed): approximate (8 bits of mantissa: features differ by
~4e-3 (VGG16, ResNet50) to 2e-2 (MobileNet) relative) and fast only where the CPU
multiplies bfloat16 natively, and not even everywhere there: on an AMD EPYC with
avx512_bf16 the copy ran VGG16 2.0x, ResNet50 1.4x and MobileNet 0.97x as fast as
float32; on an Intel Xeon with avx512_bf16 and no AMX, VGG16 0.63x and MobileNet
0.68x (bench/README.md, issue 24). So `auto` decides by a probe, where /proc/cpuinfo
lists native bfloat16: a small batch of random pixels (the data pipeline is not
touched; speed does not depend on the pixels) in each precision, one warm-up call
then the best of two, and bfloat16 only when it is at least `MARGIN` times as fast
(approximate features must pay for themselves). The chosen precision's traced
function is reused for the pass, so the probe's cost is the other precision's
copy, trace and three small calls, plus three small float32 calls; bfloat16 is not
probed at all when the float32 pass is too short for that to pay (`PAYBACK`).
Without native bfloat16, `auto` is float32 at no cost.
"""
from __future__ import annotations

import logging
import time
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_HOW = "copy"  # "copy" (bfloat16 layers) or "policy" (mixed_bfloat16): bench/bf16.py
PROBE_EXAMPLES = 8  # The probe's batch (at most the run's batch size).
MARGIN = 1.1  # bfloat16 must be this many times as fast as float32 in the probe.
# bfloat16 is probed only when the float32 pass is estimated to take this many times
# what the bfloat16 probe costs: where float32 wins, the probe then costs at most
# 1/PAYBACK of the pass (and a short pass, e.g. MobileNet's, is not probed at all).
PAYBACK = 5


class Choice(NamedTuple):
    precision: str  # "float32" or "bfloat16"
    reason: str
    forward: object = None  # The probed, traced forward function of `precision`, if any.


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set | None:
    """The CPU's feature flags from `cpuinfo`, None where it cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = set()
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return None
    return flags


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> tuple[bool, str]:
    """Whether the CPU has native bfloat16 arithmetic, and what says so."""
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return False, f"{cpuinfo} is unreadable"
    found = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if found:
        return True, f"the CPU has {', '.join(found)}"
    return False, f"the CPU has no native bfloat16 ({' or '.join(NATIVE_BF16_FLAGS)})"


def bfloat16_copy(prefix: keras.Model) -> keras.Model:
    """A copy of `prefix` computing in bfloat16 (its own bfloat16 weights), taking and
    returning float32."""
    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(prefix, clone_function=clone)
    for source, target in zip(prefix.weights, copy.weights, strict=True):
        target.assign(tf.cast(source, target.dtype))
    return copy


def mixed_bfloat16_copy(prefix: keras.Model) -> keras.Model:
    """A copy of `prefix` under Keras' `mixed_bfloat16` policy: float32 weights (the
    prefix's values) cast to bfloat16 at each call, computations in bfloat16 (Keras
    keeps normalization statistics in float32)."""
    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(prefix, clone_function=clone)
    for source, target in zip(prefix.weights, copy.weights, strict=True):
        target.assign(source)
    return copy


def forward(prefix: keras.Model, precision: str, how: str | None = None):
    """`x -> float32 features` of `prefix` in `precision` ("float32" or "bfloat16";
    `how` a bfloat16 copy is made, default `BF16_HOW`)."""
    from loops.caches.feature_cache import forward_function
    if precision == "float32":
        return forward_function(prefix)
    how = how or BF16_HOW
    copy = mixed_bfloat16_copy(prefix) if how == "policy" else bfloat16_copy(prefix)
    return forward_function(prefix, lambda x: tf.cast(copy(x, training=False), tf.float32))


def resolve(mode: str, prefix: keras.Model, batch_size: int = 32, num_examples: int = 0,
            probe_batch=None, cpuinfo: str = "/proc/cpuinfo") -> Choice:
    """The precision of the frozen pass over `num_examples` images (0: unknown) for
    `--feature_precision=mode`.

    `auto` is float32 without probing unless the CPU has native bfloat16; with it, one
    batch (`probe_batch()`, default min(`batch_size`, `PROBE_EXAMPLES`) images of
    random pixels) runs in float32, then, unless the pass is too short for a bfloat16
    probe to pay (`PAYBACK`), in bfloat16, which is chosen when it is `MARGIN` times as
    fast. `Choice.forward` is the chosen precision's traced function."""
    if mode != "auto":
        return Choice(mode, f"--feature_precision={mode}")
    native, why = native_bf16(cpuinfo)
    if not native:
        return Choice("float32", why)
    if probe_batch is not None:
        batch = probe_batch()
    else:
        shape = (min(batch_size, PROBE_EXAMPLES), *prefix.input.shape[1:])
        batch = np.random.default_rng(0).uniform(0, 255, shape).astype("float32")
    batch = tf.cast(batch, tf.float32)
    size = int(batch.shape[0])
    functions = {"float32": forward(prefix, "float32")}
    start = time.perf_counter()
    seconds = {"float32": probe(functions["float32"], batch)}
    spent = time.perf_counter() - start  # Tracing and three calls.
    if num_examples:
        # The bfloat16 probe costs a copy and a trace (as float32's warm-up did) and
        # three calls, up to 1/0.63 as slow as float32's (an Intel CPU without AMX).
        cost = max(spent - 2 * seconds["float32"], 0) + 3 * seconds["float32"] / 0.63
        pass_seconds = seconds["float32"] / size * num_examples
        if pass_seconds < PAYBACK * cost:
            return Choice("float32", f"{why}; the pass takes ~{pass_seconds:.1f} s in "
                          f"float32, too short for a bfloat16 probe (~{cost:.1f} s) to pay",
                          functions["float32"])
    functions["bfloat16"] = forward(prefix, "bfloat16")
    seconds["bfloat16"] = probe(functions["bfloat16"], batch)
    choice = "bfloat16" if seconds["bfloat16"] * MARGIN <= seconds["float32"] else "float32"
    return Choice(choice, f"{why}; a batch of {size} took "
                  f"{seconds['float32'] * 1e3:.0f} ms in float32, "
                  f"{seconds['bfloat16'] * 1e3:.0f} ms in bfloat16 (bfloat16 when "
                  f"{MARGIN:g}x as fast)", functions[choice])


def probe(fn, batch, calls: int = 2) -> float:
    """Seconds of the fastest of `calls` calls of `fn(batch)`, after one warm-up call
    (tracing, kernels)."""
    fn(batch).numpy()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn(batch).numpy()
        best = min(best, time.perf_counter() - start)
    return best


def log_choice(precision: str, reason: str) -> None:
    logging.info("feature cache: frozen forward pass in %s (%s)", precision, reason)
