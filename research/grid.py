"""A study: base configuration × axes × seeds × phases, expanded into trials.

Pure Python (no TensorFlow): parsing and validating the axes, the trial ids, the
shards. Every problem is one `ConfigError` line, raised before anything runs.

Axis syntax (command line; the same in a sweep file):
- `name=v1,v2,...`: any `Config` field (a `train.py` flag), values parsed with the
  field's type (`none` for an unset optional value, true/false for booleans).
  It applies to every phase.
- `head.name=...`, `finetune.name=...`, `evaluate.name=...`: that phase only (e.g.
  the finetune learning rate, which defaults to a tenth of the head's).
- `a/b=x1/y1,x2/y2`: a paired axis: the names take their values together (one
  configuration per pair), e.g. `head.learning_rate/finetune.learning_rate=1e-3/1e-4,3e-3/3e-4`
  (values that contain '/' or ',' go in a sweep file, where a pair is a JSON list).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from typing import Any, Optional

from flags.config import PHASES, Config
from flags.errors import ConfigError

TRIALS_DIR = "trials"
FEATURE_CACHE_DIR = "feature_cache"
IMAGE_CACHE_DIR = "image_cache"
# Owned by the sweep: --workdir is the study's root, --phases and --seeds replace these.
SWEEP_FIELDS = {"phase": "--phases", "seed": "--seeds"}
# Fields that do not change a trial's result: never part of its id, never an axis.
NOT_IN_ID = ("workdir", "phase", "seed", "overwrite", "verbose", "debug", "feature_cache_dir",
             "image_cache_dir", "image_cache")
# Must be the same in every phase of a trial (finetune and evaluate rebuild the head's network).
ARCHITECTURE_FIELDS = ("backbone", "alpha", "image_size", "dropout", "augment")
# Short names in trial ids; other fields keep their name.
ABBREVIATIONS = {"learning_rate": "lr", "unfreeze_from": "unfreeze", "epochs": "ep",
                 "batch_size": "bs", "dropout": "drop", "optimizer": "opt", "image_size": "img",
                 "lr_schedule": "sched", "alpha": "alpha", "augment": "aug", "backbone": "",
                 "weight_decay": "wd", "head": "h", "finetune": "ft", "evaluate": "ev"}
MAX_READABLE = 80

_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


# ---- values ---------------------------------------------------------------------------

def split_name(name: str) -> tuple[Optional[str], str]:
    """('finetune', 'learning_rate') for 'finetune.learning_rate'; (None, name) for a plain one."""
    if "." in name:
        phase, field = name.split(".", 1)
        if phase not in PHASES:
            raise ConfigError(f"unknown phase {phase!r} in axis name {name!r}; prefix a flag "
                              f"with one of {', '.join(p + '.' for p in PHASES)} or none")
        return phase, field
    return None, name


def check_name(name: str) -> str:
    """The Config field an axis or baseline name sets, or a one-line error."""
    phase, field = split_name(name)
    if field in SWEEP_FIELDS:
        raise ConfigError(f"--{field} cannot be an axis of a sweep; pass {SWEEP_FIELDS[field]}")
    if field not in _FIELDS:
        raise ConfigError(f"unknown flag {field!r} in axis {name!r}; an axis name is a "
                          "train.py flag (see `python train.py --helpfull`)")
    if field in NOT_IN_ID:
        raise ConfigError(f"--{field} does not change a result and cannot be an axis; pass it "
                          "once as a flag of sweep.py")
    if phase and field in ARCHITECTURE_FIELDS:
        raise ConfigError(f"--{field} defines the network and must be the same in every phase; "
                          f"use the axis {field!r} without {phase + '.'!r}")
    return field


def parse_value(field: str, raw: Any, name: str | None = None) -> Any:
    """`raw` (a string, or a JSON value from a sweep file) as the field's type."""
    kind = _FIELDS[field].type
    optional = kind.startswith("Optional[")
    base = kind[len("Optional["):-1] if optional else kind
    where = f"axis {name or field!r}"
    if isinstance(raw, str):
        text = raw.strip()
        if optional and text.lower() in ("none", "null", ""):
            return None
        try:
            if base == "bool":
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            if base == "int":
                return int(text)
            if base == "float":
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError
                return value
        except ValueError:
            raise ConfigError(f"{where}: {raw!r} is not a valid {base} for --{field}; pass "
                              f"{_example(base)}") from None
        return text
    if raw is None and optional:
        return None
    ok = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}[base]
    if isinstance(raw, bool) and base != "bool" or not isinstance(raw, ok):
        raise ConfigError(f"{where}: {raw!r} is not a valid {base} for --{field}; pass "
                          f"{_example(base)}")
    return float(raw) if base == "float" else raw


def _example(kind: str) -> str:
    return {"bool": "true or false", "int": "an integer", "float": "a number",
            "str": "a string"}[kind]


def format_value(value) -> str:
    """Compact text of a value for trial ids and tables (1e-3, not 0.001)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            mantissa, exponent = f"{value:.6e}".split("e")
            mantissa = mantissa.rstrip("0").rstrip(".")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:.6g}"
    return str(value)


# ---- axes and the study ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Axis:
    names: tuple[str, ...]  # ("learning_rate",), ("head.learning_rate", "finetune.learning_rate")
    values: tuple[tuple, ...]  # one tuple per configuration, one value per name

    @property
    def label(self) -> str:
        return "/".join(self.names)


def parse_axis(text: str) -> Axis:
    """`name=v1,v2` or `a/b=x1/y1,x2/y2` (see the module docstring)."""
    if "=" not in text:
        raise ConfigError(f"--axis={text!r} has no values; pass --axis=NAME=V1,V2 (e.g. "
                          "--axis=learning_rate=1e-3,3e-3)")
    label, raw = text.split("=", 1)
    raw_values = [v for v in raw.split(",")] if raw.strip() else []
    names = label.split("/")
    # Only a paired axis splits its values at '/' (a path stays whole); paired values
    # with '/' in them go in a sweep file, as lists.
    return make_axis(names, [v.split("/") if len(names) > 1 else [v] for v in raw_values], text)


def make_axis(names, raw_values, where: str) -> Axis:
    names = tuple(n.strip() for n in names)
    if not raw_values:
        raise ConfigError(f"axis {where!r} has no values (an empty grid); pass at least one "
                          "value, e.g. --axis=learning_rate=1e-3,3e-3")
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"axis {where!r} names a flag twice or not at all; pass "
                          "--axis=A/B=x1/y1,x2/y2")
    fields = [check_name(n) for n in names]
    values = []
    for raw in raw_values:
        raw = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        if len(raw) != len(names):
            raise ConfigError(f"axis {where!r}: the value {'/'.join(map(str, raw))!r} has "
                              f"{len(raw)} part(s) for {len(names)} name(s); pass one value per "
                              f"name joined by '/', e.g. {'/'.join(['V'] * len(names))}")
        values.append(tuple(parse_value(f, r, n)
                            for f, n, r in zip(fields, names, raw, strict=True)))
    if len(set(map(_key, values))) != len(values):
        raise ConfigError(f"axis {where!r} lists a value twice; pass each value once")
    return Axis(names, tuple(values))


def _key(value) -> str:
    return json.dumps(value, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Study:
    base: Config  # Every flag that is not an axis (phase, workdir, seed not used).
    phases: tuple[str, ...]
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...]
    baseline: tuple[tuple, ...]  # The baseline's value tuple of every axis.

    def to_dict(self) -> dict:
        defaults = Config()
        return {"phases": list(self.phases),
                "axes": {a.label: [list(v) if len(v) > 1 else v[0] for v in a.values]
                         for a in self.axes},
                "seeds": list(self.seeds),
                "baseline": {a.label: "/".join(format_value(x) for x in v)
                             for a, v in zip(self.axes, self.baseline, strict=True)},
                "flags": {k: v for k, v in self.base.to_dict().items()
                          if v != getattr(defaults, k) and k not in ("phase", "seed", "workdir")}}


def parse_phases(text) -> tuple[str, ...]:
    phases = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    phases = [p for p in phases if p]
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        raise ConfigError(f"--phases={','.join(phases)}: unknown or none; pass a list of "
                          f"{', '.join(PHASES)} (e.g. --phases=head,finetune,evaluate)")
    if len(set(phases)) != len(phases) or phases != sorted(phases, key=PHASES.index):
        raise ConfigError(f"--phases={','.join(phases)}: pass each phase once, in the order "
                          f"{','.join(PHASES)}")
    return tuple(phases)


def parse_seeds(text) -> tuple[int, ...]:
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    items = [s for s in items if s != ""]
    try:
        seeds = [int(s) for s in items]
    except (TypeError, ValueError):
        raise ConfigError(f"--seeds={text}: not a list of integers; pass e.g. --seeds=0,1,2") \
            from None
    if not seeds:
        raise ConfigError("--seeds is empty (an empty grid); pass e.g. --seeds=0,1,2")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds={text}: pass distinct non-negative integers")
    return tuple(seeds)


def parse_baseline(text) -> dict:
    """{name: raw value} from `a=1,b=x` (a paired axis: `a/b=1/x`) or a dict."""
    if isinstance(text, dict):
        return dict(text)
    out = {}
    for item in (i for i in text.split(",") if i.strip()):
        if "=" not in item:
            raise ConfigError(f"--baseline={text}: {item!r} is not NAME=VALUE; pass e.g. "
                              "--baseline=learning_rate=1e-3")
        name, value = item.split("=", 1)
        out[name.strip()] = value
    return out


def resolve_baseline(axes, raw: dict) -> tuple[tuple, ...]:
    """The baseline's value tuple on every axis; each axis with several values must be named."""
    raw = dict(raw)
    known = {n for a in axes for n in a.names} | {a.label for a in axes}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"--baseline names {', '.join(unknown)}, which is not an axis; "
                          f"axes are: {', '.join(a.label for a in axes) or 'none'}")
    if not raw:  # Default: the first value of every axis.
        return tuple(a.values[0] for a in axes)
    chosen = []
    for axis in axes:
        given = {}
        for name in axis.names:
            for key in (name, axis.label):
                if key in raw:
                    parts = raw.pop(key)
                    if key == axis.label and len(axis.names) > 1:
                        parts = parts.split("/") if isinstance(parts, str) else parts
                        parts = parts if isinstance(parts, (list, tuple)) else [parts]
                        if len(parts) != len(axis.names):
                            raise ConfigError(f"--baseline: {key}={raw_text(parts)} needs "
                                              f"{len(axis.names)} values joined by '/'")
                        given.update({n: parse_value(check_name(n), p, n)
                                      for n, p in zip(axis.names, parts, strict=True)})
                    else:
                        given[name] = parse_value(check_name(name), parts, name)
        matches = [v for v in axis.values
                   if all(v[axis.names.index(n)] == x for n, x in given.items())]
        if given and not matches:
            raise ConfigError(
                f"--baseline: {', '.join(f'{n}={format_value(x)}' for n, x in given.items())} "
                f"is not in the grid; the axis {axis.label} has "
                f"{', '.join('/'.join(map(format_value, v)) for v in axis.values)}")
        if len(matches) > 1 and given:
            raise ConfigError(f"--baseline does not pick one value of the paired axis "
                              f"{axis.label}; pass {axis.label}="
                              + "/".join(["V"] * len(axis.names)))
        if not given and len(axis.values) > 1:
            raise ConfigError(f"--baseline does not name the axis {axis.label}; pass "
                              f"--baseline=...,{axis.label}=VALUE (one of "
                              f"{', '.join('/'.join(map(format_value, v)) for v in axis.values)})")
        chosen.append(matches[0] if given else axis.values[0])
    if raw:
        raise ConfigError(f"--baseline names {', '.join(sorted(raw))}, which is not an axis; "
                          f"axes are: {', '.join(a.label for a in axes) or 'none'}")
    return tuple(chosen)


def raw_text(parts) -> str:
    return "/".join(map(str, parts))


def make_study(base: Config, phases, axes, seeds, baseline=None) -> Study:
    """Validates everything (every trial's Config is built once) and returns the study."""
    axes = tuple(axes)
    names = [n for a in axes for n in a.names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{', '.join(duplicates)} is on two axes; merge them into one --axis")
    study = Study(base, parse_phases(phases), axes, parse_seeds(seeds),
                  tuple(a.values[0] for a in axes))
    for trial in expand(study, "/nonexistent"):
        trial.configs()  # Raises the one-line ConfigError of a bad combination.
    return dataclasses.replace(study, baseline=resolve_baseline(axes,
                                                                parse_baseline(baseline or {})))


# ---- trials --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Trial:
    study_dir: str
    base: Config
    phases: tuple[str, ...]
    assignment: tuple[tuple[str, Any], ...]  # (axis name, value), in axis order.
    seed: int
    config_index: int  # Position of the configuration in the grid.

    @property
    def common(self) -> dict:
        """Plain (every-phase) assignments."""
        return {n: v for n, v in self.assignment if "." not in n}

    def overrides(self, phase: str) -> dict:
        """Per-phase assignments of `phase` that differ from the common value."""
        common = self.base.replace(**self.common)
        out = {}
        for name, value in self.assignment:
            prefix, field = split_name(name)
            if prefix == phase and getattr(common, field) != value:
                out[field] = value
        return out

    def id_flags(self) -> dict:
        """The trial's flags that differ from train.py's defaults (its identity), seed excluded."""
        defaults = Config()
        common = self.base.replace(**self.common)
        flags = {k: v for k, v in common.to_dict().items()
                 if k not in NOT_IN_ID and v != getattr(defaults, k)}
        for phase in PHASES:
            flags.update({f"{phase}.{k}": v for k, v in self.overrides(phase).items()})
        return flags

    @property
    def digest(self) -> str:
        text = json.dumps(sorted(self.id_flags().items()), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def readable(self) -> str:
        common = self.base.replace(**self.common)
        parts = []
        for name, value in self.assignment:
            prefix, field = split_name(name)
            reference = getattr(self.base if prefix is None else common, field)
            if value == reference:  # An axis added later with the old value keeps old ids.
                continue
            short = ".".join(ABBREVIATIONS.get(p, p) for p in ([prefix] if prefix else []) +
                             [field])
            text = format_value(value)
            if isinstance(value, bool):
                part = short if value else "no" + short
            elif isinstance(value, (int, float)) or not short:
                part = short + text
            else:
                part = f"{short}-{text}"
            parts.append(part)
        text = re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(parts)).strip("-.")
        return text[:MAX_READABLE]

    @property
    def group_id(self) -> str:
        """The configuration's id: the trial id without the seed (HParams groups by it)."""
        return f"{self.readable}-{self.digest}" if self.readable else self.digest

    @property
    def trial_id(self) -> str:
        return (f"{self.readable}-s{self.seed}-{self.digest}" if self.readable
                else f"s{self.seed}-{self.digest}")

    @property
    def trial_dir(self) -> str:
        return os.path.join(self.study_dir, TRIALS_DIR, self.trial_id)

    def config(self, phase: str) -> Config:
        """The run configuration of one phase: an ordinary tapefit run in the trial's directory."""
        cache = self.base.feature_cache
        values = {**self.common, **self.overrides(phase)}
        cfg = self.base.replace(
            **values, phase=phase, seed=self.seed,
            workdir=self.trial_dir, overwrite=False,
            # Trials that share backbone, weights, cut and data share one feature cache:
            # on disk, under the study's root.
            feature_cache="disk" if cache == "auto" else cache,
            feature_cache_dir=(self.base.feature_cache_dir
                               or os.path.join(self.study_dir, FEATURE_CACHE_DIR)),
            # Decoded images likewise (keyed by the data): one copy for the study.
            image_cache_dir=(self.base.image_cache_dir
                             or os.path.join(self.study_dir, IMAGE_CACHE_DIR)))
        return cfg

    def configs(self) -> dict:
        return {phase: self.config(phase) for phase in self.phases}

    def to_dict(self) -> dict:
        return {"trial_id": self.trial_id, "group_id": self.group_id, "seed": self.seed,
                "phases": list(self.phases), "axes": {n: v for n, v in self.assignment},
                "id_flags": self.id_flags(),
                "configs": {p: c.to_dict() for p, c in self.configs().items()}}


def configurations(study: Study) -> list[tuple[tuple[str, Any], ...]]:
    """Every assignment of the axes' values (the grid without seeds), first axis slowest."""
    grid = [()]
    for axis in study.axes:
        grid = [g + tuple(zip(axis.names, v, strict=True))
                for g in grid for v in axis.values]
    return grid


def expand(study: Study, study_dir: str) -> list[Trial]:
    """Every trial, seed-major (all configurations of the first seed first), so an
    unfinished study already has every configuration at its first seeds."""
    grid = configurations(study)
    trials = [Trial(study_dir, study.base, study.phases, assignment, seed, index)
              for seed in study.seeds for index, assignment in enumerate(grid)]
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise ConfigError("two configurations of the grid are the same run; drop the axis "
                          "value that repeats the base flags")
    return trials


def baseline_assignment(study: Study) -> tuple:
    return tuple((n, x) for a, v in zip(study.axes, study.baseline, strict=True)
                 for n, x in zip(a.names, v, strict=True))


def parse_shard(text: str) -> tuple[int, int]:
    """(index, count) from `i/n`, 0 <= i < n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not int(match.group(2)) or int(match.group(1)) >= int(match.group(2)):
        raise ConfigError(f"--shard={text}: pass I/N with 0 <= I < N (e.g. "
                          "--shard=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(match.group(1)), int(match.group(2))


def shard(trials: list[Trial], index: int, count: int) -> list[Trial]:
    """A deterministic slice: trial k of the grid goes to shard k mod count."""
    return trials[index::count]


def load_sweep_file(path: str) -> dict:
    """A sweep file: {"phases", "axes": {name: [values]}, "seeds", "baseline", "flags"}."""
    try:
        with open(path) as f:
            content = json.load(f)
    except OSError as e:
        raise ConfigError(f"--sweep_file={path}: {e.strerror}; pass an existing JSON file") \
            from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--sweep_file={path} is not JSON ({e.msg}, line {e.lineno}); fix the "
                          "file") from None
    known = {"phases", "axes", "seeds", "baseline", "flags"}
    if not isinstance(content, dict) or set(content) - known:
        raise ConfigError(f"--sweep_file={path}: unknown keys "
                          f"{sorted(set(content) - known) if isinstance(content, dict) else ''}; "
                          f"a sweep file has {', '.join(sorted(known))}")
    return content


def axes_from_file(content: dict, path: str) -> list[Axis]:
    axes = content.get("axes", {})
    if not isinstance(axes, dict):
        raise ConfigError(f"--sweep_file={path}: 'axes' must map a name to a list of values")
    out = []
    for label, values in axes.items():
        if not isinstance(values, list):
            raise ConfigError(f"--sweep_file={path}: axis {label!r} must be a list of values")
        names = label.split("/")
        out.append(make_axis(names, [v if isinstance(v, list) else
                                     (v.split("/") if isinstance(v, str) and len(names) > 1
                                      else [v]) for v in values], label))
    return out
