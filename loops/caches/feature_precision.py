"""`--feature_precision`: the feature cache's frozen forward pass in float32 or bfloat16.

The cached features are always stored as float32; only the one-time pass through
the frozen prefix changes. `bfloat16` runs a copy of the prefix whose layers
compute (and hold their weights) in bfloat16: approximate (8 bits of mantissa:
features differ by ~1e-2 relative) and fast only where the CPU multiplies
bfloat16 natively (AVX512-BF16, AMX); elsewhere TensorFlow converts every operand
and it is slower than float32. `auto` picks bfloat16 only where /proc/cpuinfo
lists native bfloat16 and a one-batch probe runs it faster than float32 for
this backbone; otherwise float32, with the reason logged.
"""
from __future__ import annotations

import logging
import time

import keras
import tensorflow as tf

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> tuple[bool, str]:
    """Whether the CPU has native bfloat16 arithmetic, and what says so."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = set()
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
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


def forward(prefix: keras.Model, precision: str):
    """`x -> float32 features` of `prefix` in `precision` ("float32" or "bfloat16")."""
    from loops.caches.feature_cache import forward_function
    if precision == "float32":
        return forward_function(prefix)
    copy = bfloat16_copy(prefix)
    return forward_function(prefix, lambda x: tf.cast(copy(x, training=False), tf.float32))


def resolve(mode: str, prefix: keras.Model, probe_batch=None, cpuinfo: str = "/proc/cpuinfo"
            ) -> tuple[str, str]:
    """(precision, reason): float32 or bfloat16 for `--feature_precision=mode`.

    `auto` is float32 without native bfloat16; with it, bfloat16 when one batch
    (`probe_batch()`, called only then; after a warm-up call each) runs faster in
    bfloat16.
    """
    if mode != "auto":
        return mode, f"--feature_precision={mode}"
    native, why = native_bf16(cpuinfo)
    if not native:
        return "float32", why
    batch = probe_batch() if probe_batch is not None else None
    if batch is None:
        return "float32", f"{why}, but no batch to probe"
    batch = tf.cast(batch, tf.float32)
    seconds = {p: probe(forward(prefix, p), batch) for p in ("float32", "bfloat16")}
    choice = min(seconds, key=seconds.get)
    return choice, (f"{why}; one batch took {seconds['float32'] * 1e3:.0f} ms in float32, "
                    f"{seconds['bfloat16'] * 1e3:.0f} ms in bfloat16")


def probe(fn, batch, calls: int = 1) -> float:
    """Seconds per call of `fn(batch)` after one warm-up call (tracing, kernels)."""
    fn(batch).numpy()
    start = time.perf_counter()
    for _ in range(calls):
        fn(batch).numpy()
    return (time.perf_counter() - start) / calls


def log_choice(precision: str, reason: str) -> None:
    logging.info("feature cache: frozen forward pass in %s (%s)", precision, reason)
