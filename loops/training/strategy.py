"""tf.distribute strategy selection (both loops build and train under it), and
which worker of a multi-worker job writes the run directory."""
from __future__ import annotations

import functools
import json
import os

import tensorflow as tf

from tapefit.flags.config import ConfigError

_multi_worker = None  # One MultiWorkerMirroredStrategy per process (collectives start once).


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default`: the current (single-device) strategy. `mirrored`: all GPUs, or
    every logical CPU device when there is no GPU. `multi_worker`: reads TF_CONFIG."""
    global _multi_worker
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if _multi_worker is None:
            _multi_worker = tf.distribute.MultiWorkerMirroredStrategy()
        return _multi_worker
    raise ValueError(f"unknown strategy {name!r}")


def check_supported(cfg) -> None:
    """One-line errors for what TF 2.21 / Keras 3.15 cannot run across workers."""
    if cfg.strategy != "multi_worker":
        return
    task()  # A malformed TF_CONFIG: one line now, not a traceback from TF later.
    if cfg.jit_compile and not tf.config.list_physical_devices("GPU"):
        raise ConfigError("--jit_compile cannot run --strategy=multi_worker on CPUs (XLA has "
                          "no CPU collectives); drop --jit_compile")
    if cfg.loop == "fit" and cfg.steps_per_execution > 1:
        raise ConfigError("--loop=fit cannot run --steps_per_execution > 1 with "
                          "--strategy=multi_worker (Keras 3 fails); pass --steps_per_execution=1 "
                          "or --loop=custom")


_TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}')


def task() -> tuple[str | None, int, dict]:
    """(task type, task index, cluster) of this process, from TF_CONFIG; (None, 0, {})
    without one. A malformed TF_CONFIG is a one-line ConfigError."""
    text = os.environ.get("TF_CONFIG") or ""
    if not text.strip():
        return None, 0, {}

    def bad(problem):
        return ConfigError(f"TF_CONFIG {problem}; set it like {_TF_CONFIG_EXAMPLE} "
                           "(one entry per worker, this process's type and index) or unset it")

    try:
        config = json.loads(text)
    except ValueError as e:
        raise bad(f"is not JSON ({e})") from None
    if not isinstance(config, dict):
        raise bad("is not a JSON object")
    cluster, task_spec = config.get("cluster") or {}, config.get("task") or {}
    if not cluster and not task_spec:
        return None, 0, {}
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v and all(isinstance(a, str) and a for a in v)
            for v in cluster.values()):
        raise bad('needs "cluster": a JSON object of task types, each a list of "host:port"')
    if not isinstance(task_spec, dict) or not task_spec:
        raise bad('has a cluster but no "task"')
    task_type, index = task_spec.get("type"), task_spec.get("index", 0)
    if isinstance(index, str) and index.isdigit():
        index = int(index)
    if task_type not in cluster:
        raise bad(f'names task type {task_type!r}, which its cluster lacks '
                  f'(it has {", ".join(sorted(cluster))})')
    if isinstance(index, bool) or not isinstance(index, int) or \
            not 0 <= index < len(cluster[task_type]):
        raise bad(f'has task index {index!r}, but its cluster has {len(cluster[task_type])} '
                  f'{task_type} entries (indices 0 to {len(cluster[task_type]) - 1})')
    return task_type, index, cluster


def is_chief(strategy_name: str) -> bool:
    """Whether this process writes the run directory: always, except under
    `multi_worker`, where only the chief does (task type 'chief', or 'worker' 0
    when the cluster has no chief), as in the TF multi-worker guides."""
    if strategy_name != "multi_worker":
        return True
    task_type, index, cluster = task()
    if task_type is None or not cluster:
        return True  # No TF_CONFIG: a single local worker.
    return task_type == "chief" or (task_type == "worker" and index == 0
                                    and "chief" not in cluster)


def in_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` spans several workers (processes)."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def barrier(strategy: tf.distribute.Strategy, token: int = 0) -> bool:
    """Waits until every worker gets here (an all-gather); whether all of them
    passed the same `token` (an integer below 2**53). True at once on one worker."""
    if not in_multi_worker(strategy):
        return True
    value = tf.constant([token], tf.float64)
    tokens = strategy.gather(strategy.run(lambda: value), axis=0).numpy().tolist()
    return tokens == [token] * len(tokens)


def prepare_fit(model, strategy: tf.distribute.Strategy, data: tf.data.Dataset) -> None:
    """Lets a compiled Keras 3 model `fit()` and `evaluate()` across workers.

    Keras 3 (3.15 included, keras-team/keras#20585) fails there twice: its symbolic
    build all-reduces a whole input batch (a tuple, which the strategy cannot
    reduce), and it reduces each step's scalar logs along an axis 0 they lack.
    So we build from the dataset's element spec, and the steps return their logs
    as 1-element vectors: Keras then averages them over replicas, as it does
    under MirroredStrategy. Nothing changes on one worker.
    """
    if not in_multi_worker(strategy):
        return
    with strategy.scope():
        model._symbolic_build(data_batch=data.element_spec)
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    for name in ("train_step", "test_step"):
        setattr(model, name, functools.partial(_vector_logs, getattr(model, name)))


def _vector_logs(step, data):
    return tf.nest.map_structure(lambda value: tf.expand_dims(value, 0), step(data))


def split_cpu(num_devices: int) -> None:
    """Splits the host CPU into `num_devices` logical devices (before TF starts)."""
    if num_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
