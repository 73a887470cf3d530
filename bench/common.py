"""Shared helpers for the benchmarks in bench/ (timing, medians, tables, workers).

Every benchmark is one invocation of one script: it measures its variants
interleaved (A, B, A, B, ...) on this machine and prints medians and ratios.
Peak memory is per variant, so each variant's max RSS comes from a child
process of that invocation (`run_worker`) that runs only that variant and
reports its own peak RSS (`max_rss_mib`).

These are benchmarks, not tests: nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA_DIR = "../shared/data/catsdogs"
DEFAULT_MOBILENET_WEIGHTS = "../shared/weights/mobilenet_2_5_224_tf_no_top.h5"
RESULT_PREFIX = "BENCH_RESULT "


# ---- arguments and checks ----------------------------------------------------------

def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                        help="image folder DIR/{train,test}/{cat,dog}/*.jpg (read-only)")
    parser.add_argument("--no_memory", action="store_true",
                        help="skip the per-variant peak-RSS child runs")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def check_data_dir(path: str) -> str:
    """The absolute data folder, or exit with a one-line message."""
    if not os.path.isdir(os.path.join(path, "train")):
        sys.exit(f"bench: --data_dir={path} is not an image folder with train/<class>/ "
                 "(e.g. ../shared/data/catsdogs); pass --data_dir=DIR")
    return os.path.abspath(path)


def check_file(path: str, flag: str) -> str:
    if not os.path.isfile(path):
        sys.exit(f"bench: {flag}={path} does not exist; pass {flag}=PATH")
    return os.path.abspath(path)


def quiet_tf():
    """Imports TensorFlow with its Python logging quietened; returns the module."""
    import logging

    import tensorflow as tf
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


# ---- timing and statistics --------------------------------------------------------

def now() -> float:
    return time.perf_counter()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def spread(values) -> str:
    """`min–max` of the repeats, for the tables."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{min(values):.3g}–{max(values):.3g}"


def max_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    VmHWM of /proc/self/status, not getrusage's ru_maxrss: a child started by
    subprocess (vfork + exec) inherits its parent's ru_maxrss on Linux, so a
    small child of a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def loadavg() -> float:
    return os.getloadavg()[0]


def interleaved(variants, repeats):
    """(repeat, variant) in the order A, B, A, B, ..."""
    for repeat in range(repeats):
        for variant in variants:
            yield repeat, variant


class EpochClock:
    """Epoch wall times of one run, from a LambdaCallback of `callbacks` (custom
    loop) or `keras.callbacks` (fit), passed as phases.train's `extra_hooks`."""

    def __init__(self):
        self.train_begin = None
        self.train_end = None
        self.epoch_seconds = []
        self.epoch_cpu_seconds = []  # CPU time of this process (all its threads).
        self._start = self._start_cpu = None

    def hooks(self, module):
        return [module.LambdaCallback(on_train_begin=self._train_begin,
                                      on_epoch_begin=self._epoch_begin,
                                      on_epoch_end=self._epoch_end,
                                      on_train_end=self._train_end)]

    def _train_begin(self, logs=None):
        self.train_begin = now()

    def _train_end(self, logs=None):
        self.train_end = now()

    def _epoch_begin(self, epoch, logs=None):
        self._start, self._start_cpu = now(), time.process_time()

    def _epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(now() - self._start)
        self.epoch_cpu_seconds.append(time.process_time() - self._start_cpu)


# ---- child processes ----------------------------------------------------------------

def emit(result: dict) -> None:
    """Worker side: prints the result line the parent reads (with this process' peak RSS)."""
    result = dict(result, max_rss_mib=max_rss_mib())
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_worker(script: str, args: list[str], timeout: float | None = None) -> dict:
    """Runs `python script args` and returns the dict its `emit` printed."""
    cmd = [sys.executable, script, *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    raise RuntimeError(f"worker {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")


def fresh_workdir(prefix: str) -> str:
    """A new temporary folder, removed when this process exits."""
    path = tempfile.mkdtemp(prefix=f"tapefit-bench-{prefix}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# ---- reporting ------------------------------------------------------------------------

def machine_line() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import keras
        import tensorflow as tf
        versions = f"TF {tf.__version__}, Keras {keras.__version__}"
    except ImportError:
        versions = "TF ?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{datetime.date.today().isoformat()}, {platform.node() or 'host'}: "
            f"{os.cpu_count()} cores ({model}; {vector_units()}), {mem:.0f} GiB, CPU only; "
            f"{versions}; Python {platform.python_version()}")


def vector_units(cpuinfo: str = "/proc/cpuinfo") -> str:
    """What decides the speed of float32 and bfloat16 here: the widest vector unit and
    native bfloat16 (machines of one name differ: AVX2-only, AVX-512 with avx512_bf16,
    AMX)."""
    from tapefit.loops.caches.feature_precision import NATIVE_BF16_FLAGS, cpu_flags
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return "flags unknown"
    width = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = [f for f in NATIVE_BF16_FLAGS if f in flags]
    return f"{width}, {' + '.join(bf16) if bf16 else 'no native bf16'}" + (
        "" if "amx_bf16" in flags else ", no AMX")


def table(header, rows) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
              for r in cells[1:]]
    return "\n".join(lines)


def report(title: str, text: str, results: dict, json_path: str | None) -> None:
    print(f"\n## {title}\n\n{machine_line()}\n\n{text}\n", flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True, default=str)
            f.write("\n")


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# ---- whole phases through phases.train (head_cache, finetune_cache) ------------------

VARIANT_PRECISION = {"custom_auto": "auto", "custom_bf16": "bfloat16"}


def phase_config(args, variant: str, workdir: str, **changes):
    """The Config of one benchmark run: `variant` is custom (feature cache as
    --feature_cache), custom_nocache (cache off), custom_auto / custom_bf16 (the
    cache with --feature_precision=auto / bfloat16) or fit."""
    from tapefit.flags.config import Config
    loop = "fit" if variant == "fit" else "custom"
    feature_cache = "off" if variant == "custom_nocache" else args.feature_cache
    return Config(loop=loop, workdir=workdir, overwrite=True, backbone=args.backbone,
                  weights="none", image_size=args.image_size, data_dir=args.data_dir,
                  max_examples_per_split=args.examples, batch_size=args.batch_size,
                  feature_cache=feature_cache, tensorboard=args.tensorboard, verbose=0,
                  feature_precision=VARIANT_PRECISION.get(variant, "float32"), **changes)


def timed_phase(cfg) -> dict:
    """Runs phases.train(cfg) and returns its wall times.

    total_s: the whole call (data listing and checks, model build, the custom
    loop's one-time feature pass, every epoch with validation, checkpoints);
    setup_s: call start to on_train_begin; epoch_s: on_epoch_begin to
    on_epoch_end of each epoch (training + validation + epoch-end hooks);
    *_cpu_s: CPU time of this process (all threads), robust to other load.
    """
    import logging

    from tapefit.loops import phases

    messages = []

    class Catch(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    root = logging.getLogger()
    root.addHandler(Catch(logging.INFO))
    root.setLevel(logging.INFO)
    clock = EpochClock()
    start, start_cpu = now(), time.process_time()
    logs = phases.train(cfg, extra_hooks=clock.hooks).logs
    total, total_cpu = now() - start, time.process_time() - start_cpu
    return {"total_s": total, "total_cpu_s": total_cpu, "setup_s": clock.train_begin - start,
            "epoch_s": clock.epoch_seconds, "epoch_cpu_s": clock.epoch_cpu_seconds,
            "after_s": start + total - clock.train_end,
            "last_logs": logs, "loadavg_end": loadavg(),
            "feature_cache": [m for m in messages if "feature cache" in m]}


def passthrough_args(argv) -> list[str]:
    """This invocation's arguments for a worker child, without --json."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json="):
            out.append(arg)
    return out
