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
0.68x (bench/README.md, issue 24). So `auto` decides by a probe where /proc/cpuinfo
lists native bfloat16, made inside the training split's pass (`InPass`): its float32
side is the pass's own first batches, and bfloat16 is probed only when the rest of
the pass is long enough to repay it. Without native bfloat16, `auto` is float32 at no
cost.
"""
from __future__ import annotations

import logging
import time
from typing import NamedTuple

import keras
import tensorflow as tf

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_HOW = "copy"  # "copy" (bfloat16 layers) or "policy" (mixed_bfloat16): bench/bf16.py
MARGIN = 1.1  # bfloat16 must be this many times as fast as float32 in the probe.
# bfloat16 is probed only when, were it 2x as fast, the rest of the pass would save
# PAYBACK times what its probe costs (a short pass, e.g. MobileNet's, is not probed).
PAYBACK = 2


class Choice(NamedTuple):
    precision: str  # "float32" or "bfloat16"
    reason: str
    forward: object = None  # The chosen precision's traced forward function, if made.


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


def bfloat16_copy(prefix: keras.Model, how: str = BF16_HOW) -> keras.Model:
    """A copy of `prefix` computing in bfloat16, taking float32: "copy", every layer's
    dtype bfloat16 (its own bfloat16 weights); "policy", Keras' `mixed_bfloat16` policy
    (float32 weights, the prefix's values, cast to bfloat16 at each call; Keras keeps
    normalization statistics in float32)."""
    dtype = "mixed_bfloat16" if how == "policy" else "bfloat16"

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = dtype
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(prefix, clone_function=clone)
    for source, target in zip(prefix.weights, copy.weights, strict=True):
        target.assign(tf.cast(source, target.dtype))
    return copy


def forward(prefix: keras.Model, precision: str, how: str | None = None):
    """`x -> float32 features` of `prefix` in `precision` ("float32" or "bfloat16";
    `how` a bfloat16 copy is made, default `BF16_HOW`)."""
    from tapefit.loops.caches.feature_cache import forward_function
    if precision == "float32":
        return forward_function(prefix)
    copy = bfloat16_copy(prefix, how or BF16_HOW)
    return forward_function(prefix, lambda x: tf.cast(copy(x, training=False), tf.float32))


def resolve(mode: str, cpuinfo: str = "/proc/cpuinfo") -> Choice:
    """The precision of the frozen pass for `--feature_precision=mode`, or, for `auto`
    on a CPU with native bfloat16, `Choice("auto", why)`: probe it in the pass
    (`InPass`). Without native bfloat16, `auto` is float32 and costs nothing."""
    if mode != "auto":
        return Choice(mode, f"--feature_precision={mode}")
    native, why = native_bf16(cpuinfo)
    return Choice("auto" if native else "float32", why)


class InPass:
    """`auto`'s probe inside the training split's frozen pass, so that the probe's
    float32 side costs nothing: the pass's first two full batches run in float32 (the
    first traces and creates the kernels the pass needs anyway, the second is timed);
    then, only when the rest of the pass is long enough for bfloat16 to repay its probe
    (at 2x, `PAYBACK`), the same two batches run in bfloat16 (a copy, its trace, a
    warm-up, the second timed); bfloat16 wins at `MARGIN`x, and then its features of
    those two batches replace float32's (the cache holds one precision) and the pass
    goes on in bfloat16. Where float32 wins, the probe's cost is the bfloat16 copy,
    trace and two batches; where the pass is short, nothing."""

    def __init__(self, prefix: keras.Model, why: str, batches: int):
        self.prefix, self.why, self.batches = prefix, why, batches
        self.precision, self.reason, self.forward = None, "", None  # Until decided.

    def decide(self, run, images: list, seconds: list, float32_fn):
        """After the first two full batches (`images`, each run's `seconds`, float32):
        the bfloat16 features of those batches when bfloat16 wins, else None. `run(fn, x)`
        computes a batch's features as stored (flips included)."""
        first, t32 = seconds
        remaining = self.batches - 2
        # The bfloat16 probe: a copy and trace and new kernels (as float32's first batch
        # cost beyond its compute) and two batches, up to 1/0.63 as slow as float32's.
        cost = max(first - t32, 0) + 2 * t32 / 0.63
        gain = remaining * t32 / 2  # Were bfloat16 2x as fast.
        self.precision, self.forward = "float32", float32_fn
        if gain < PAYBACK * cost:
            self.reason = (f"{self.why}; the rest of the pass (~{remaining * t32:.1f} s in "
                           f"float32) is too short for a bfloat16 probe (~{cost:.1f} s) to pay")
            return None
        fn = forward(self.prefix, "bfloat16")
        outputs = [run(fn, images[0])]
        start = time.perf_counter()
        outputs.append(run(fn, images[1]))
        t16 = time.perf_counter() - start
        self.reason = (f"{self.why}; a batch of {int(images[1].shape[0])} took "
                       f"{t32 * 1e3:.0f} ms in float32, {t16 * 1e3:.0f} ms in bfloat16 "
                       f"(bfloat16 when {MARGIN:g}x as fast), probed in the pass")
        if t16 * MARGIN > t32:
            return None
        self.precision, self.forward = "bfloat16", fn
        return outputs

    def settle(self, float32_fn) -> None:
        """A pass of fewer than two full batches: float32, nothing probed."""
        self.precision, self.forward = "float32", float32_fn
        self.reason = f"{self.why}; the pass is too short to probe"


def log_choice(precision: str, reason: str) -> None:
    logging.info("feature cache: frozen forward pass in %s (%s)", precision, reason)
