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
import functools
import hashlib
import json
import math
import re
from typing import Any, Optional

from tapefit.flags import identity as identity_lib
from tapefit.flags.config import (
    ARCHITECTURE,
    DATA,
    PHASES,
    RECIPE_FIELDS,
    RESUMABLE,
    Config,
    fields_with,
    key_values,
    resolve,
)
from tapefit.flags.config import NOT_IN_ID as _NOT_IN_ID_ROLE
from tapefit.flags.errors import ConfigError
from tapefit.layout import atomic as files
from tapefit.layout import paths

# A trial runs in <study>/trials/<id>/ (layout.paths.trial_dir). Phase runs that trials
# share (identical flags up to that phase, and the seed):
# <study>/shared/<phase>-s<seed>-<key>/<phase>; the trial's <phase> is a link to it.
# Owned by the sweep: --workdir is the study's root, --phases and --seeds replace these.
SWEEP_FIELDS = {"phase": "--phases", "seed": "--seeds"}
# Fields that do not change a trial's result: never part of its id, never an axis.
NOT_IN_ID = fields_with(_NOT_IN_ID_ROLE)
# Must be the same in every phase of a trial (finetune and evaluate rebuild the head's network).
ARCHITECTURE_FIELDS = fields_with(ARCHITECTURE)
# Short names in trial ids; other fields keep their name.
ABBREVIATIONS = {"learning_rate": "lr", "unfreeze_from": "unfreeze", "epochs": "ep",
                 "batch_size": "bs", "dropout": "drop", "optimizer": "opt", "image_size": "img",
                 "lr_schedule": "sched", "alpha": "alpha", "augment": "aug", "backbone": "",
                 "weight_decay": "wd", "head": "h", "finetune": "ft", "evaluate": "ev"}
MAX_READABLE = 80
# Flags a run may change and still resume (role RESUMABLE, as loops.rundir.run_dir): they do not
# change a phase's result, so two phase runs that differ only in them are one run.
RESUMABLE_CHANGES = fields_with(RESUMABLE)
# A sweep file is a small JSON document: larger (or deeper) input is refused.
MAX_SWEEP_FILE_BYTES = 1 << 20

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
    explicit: tuple[str, ...] = ()  # Base flags given explicitly that a --recipe also sets.
    race: Optional["Race"] = None
    # --flips: further (configuration, baseline) pairs of the paired per-example view, each
    # side a value tuple of every axis as `baseline` (research/flips.py).
    flips: tuple[tuple[tuple[tuple, ...], tuple[tuple, ...]], ...] = ()

    def to_dict(self) -> dict:
        defaults = Config()
        return {**({"race": self.race.to_dict()} if self.race else {}),
                **({"flips": [" vs ".join(self._spec(side) for side in pair)
                              for pair in self.flips]} if self.flips else {}),
                "phases": list(self.phases),
                "axes": {a.label: [list(v) if len(v) > 1 else v[0] for v in a.values]
                         for a in self.axes},
                "seeds": list(self.seeds),
                "baseline": {a.label: "/".join(format_value(x) for x in v)
                             for a, v in zip(self.axes, self.baseline, strict=True)},
                "flags": {k: v for k, v in self.base.to_dict().items()
                          if (v != getattr(defaults, k) or k in self.explicit)
                          and k not in ("phase", "seed", "workdir")}}

    def _spec(self, values) -> str:
        """`NAME=V,NAME=V` of one configuration (as --baseline takes it)."""
        return ",".join(f"{a.label}={'/'.join(format_value(x) for x in v)}"
                        for a, v in zip(self.axes, values, strict=True))

    def config_index(self, values) -> int:
        """The grid position of the configuration with these axis values."""
        return configurations(self).index(assignment_of(self, values))


def parse_phases(text) -> tuple[str, ...]:
    if isinstance(text, str):
        phases = [p.strip() for p in text.split(",")]
    elif isinstance(text, (list, tuple)) and all(isinstance(p, str) for p in text):
        phases = list(text)
    else:
        raise ConfigError(f"--phases={_short(text)}: pass a list of phase names, e.g. "
                          '--phases=head,finetune,evaluate (in a sweep file: "phases": '
                          '["head", "finetune", "evaluate"])')
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
    """Distinct non-negative integers from `0,1,2` or a JSON list of integers; anything
    else (1.5, true, "1", a single number) is refused, never coerced."""
    if isinstance(text, str):
        items = [s.strip() for s in text.split(",") if s.strip() != ""]
        bad = [s for s in items if not re.fullmatch(r"\d+", s)]
        seeds = None if bad else [int(s) for s in items]
    elif isinstance(text, (list, tuple)):
        bad = [s for s in text if isinstance(s, bool) or not isinstance(s, int)]
        seeds = None if bad else list(text)
    else:
        bad, seeds = [text], None
    if seeds is None:
        raise ConfigError(f"--seeds={_short(text)}: {_short(bad[0])} is not a non-negative "
                          "integer; pass a list of integers, e.g. --seeds=0,1,2 (in a sweep "
                          'file: "seeds": [0, 1, 2])')
    if not seeds:
        raise ConfigError("--seeds is empty (an empty grid); pass e.g. --seeds=0,1,2")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) >= 2**32:
        raise ConfigError(f"--seeds={_short(text)}: pass distinct integers in [0, 2**32)")
    return tuple(seeds)


def _short(value, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def parse_baseline(text) -> dict:
    """{name: raw value} from `a=1,b=x` (a paired axis: `a/b=1/x`) or a dict."""
    if isinstance(text, dict):
        return dict(text)
    if not isinstance(text, str):
        raise ConfigError(f"--baseline={_short(text)}: pass NAME=VALUE,... (in a sweep file: "
                          '"baseline": {"NAME": VALUE})')
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


def make_study(base: Config, phases, axes, seeds, baseline=None, explicit=(),
               race=None, flips=()) -> Study:
    """Validates everything (every trial's Config is built once) and returns the study.

    `explicit`: the base flags given on the command line or in the sweep file (a
    --recipe does not change them); `race`: a `Race` (seeds added in rounds); `flips`:
    "CONFIGURATION vs BASELINE" texts (each side as --baseline), further pairs of the
    per-example view (`parse_flips`)."""
    axes = tuple(axes)
    names = [n for a in axes for n in a.names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{', '.join(duplicates)} is on two axes; merge them into one --axis")
    plain = {n for n in names if "." not in n}
    for name in names:
        phase, field = split_name(name)
        if phase and field in plain:
            raise ConfigError(f"the axes {field!r} and {name!r} both set the {phase} phase's "
                              f"--{field}; keep one ({field} sets every phase, {name} only the "
                              f"{phase} phase)")
    seeds = parse_seeds(seeds)
    if race is not None:
        seeds = race.check(seeds)
    explicit = tuple(sorted(set(explicit) & set(RECIPE_FIELDS)))
    study = Study(base, parse_phases(phases), axes, seeds, tuple(a.values[0] for a in axes),
                  explicit, race)
    for trial in expand(study, "/nonexistent"):
        trial.configs()  # Raises the one-line ConfigError of a bad combination.
    return dataclasses.replace(study, baseline=resolve_baseline(axes,
                                                                parse_baseline(baseline or {})),
                               flips=parse_flips(axes, flips))


def parse_flips(axes, texts) -> tuple:
    """`--flips=A vs B` (repeatable; a sweep file's "flips": a list of them): each side
    names one configuration as --baseline does; a one-line error otherwise."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise ConfigError(f"--flips={texts!r}: pass CONFIGURATION vs BASELINE, e.g. "
                          "--flips='learning_rate=3e-3 vs learning_rate=1e-3'")
    pairs = []
    for text in texts:
        sides = str(text).split(" vs ")
        if len(sides) != 2 or not all(s.strip() for s in sides):
            raise ConfigError(f"--flips={text!r}: pass CONFIGURATION vs BASELINE, each as "
                              "--baseline takes it, e.g. --flips='learning_rate=3e-3 vs "
                              "learning_rate=1e-3'")
        try:
            pair = tuple(resolve_baseline(axes, parse_baseline(s.strip())) for s in sides)
        except ConfigError as e:
            raise ConfigError(f"--flips={text!r}: each side names a configuration as "
                              f"--baseline does ({e})") from None
        if pair[0] == pair[1]:
            raise ConfigError(f"--flips={text!r} names one configuration twice; name two")
        pairs.append(pair)
    return tuple(pairs)


@dataclasses.dataclass(frozen=True)
class Race:
    """`--race`: seeds are added in rounds (research/race.py)."""
    min_seeds: int = 3
    max_seeds: Optional[int] = None  # Default: every seed of the study.
    alpha: float = 0.05

    def check(self, seeds: tuple) -> tuple:
        """The study's seeds for the race (its first max_seeds), or a one-line error."""
        if isinstance(self.min_seeds, bool) or not isinstance(self.min_seeds, int) or \
                self.min_seeds < 2:
            raise ConfigError(f"--min_seeds={self.min_seeds} must be an integer of at least 2 "
                              "(a paired test needs two seeds); pass e.g. --min_seeds=3")
        top = self.max_seeds if self.max_seeds is not None else len(seeds)
        if isinstance(top, bool) or not isinstance(top, int) or top < self.min_seeds:
            raise ConfigError(f"--max_seeds={top} must be an integer of at least --min_seeds="
                              f"{self.min_seeds}")
        if top > len(seeds):
            raise ConfigError(f"--max_seeds={top} but the study lists {len(seeds)} seeds "
                              f"({','.join(map(str, seeds))}); pass --seeds with {top} seeds, "
                              "or leave --seeds out (then the seeds are 0..max_seeds-1)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or \
                not 0 < self.alpha < 1:
            raise ConfigError(f"--race_alpha={self.alpha} must be in (0, 1); pass e.g. "
                              "--race_alpha=0.05")
        return tuple(seeds[:top])

    def to_dict(self) -> dict:
        return {"min_seeds": self.min_seeds, "max_seeds": self.max_seeds, "alpha": self.alpha}


def race_from(value, where: str = "--sweep_file") -> Optional[Race]:
    """A Race from a sweep file's "race" (true, false or {min_seeds, max_seeds, alpha})."""
    if value is None or value is False:
        return None
    if value is True:
        return Race()
    if not isinstance(value, dict) or set(value) - {"min_seeds", "max_seeds", "alpha"}:
        raise ConfigError(f"{where}: 'race' must be true or {{\"min_seeds\": 3, "
                          '"max_seeds": 8, "alpha": 0.05}')
    return Race(**value)


# ---- trials --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Trial:
    study_dir: str
    base: Config
    phases: tuple[str, ...]
    assignment: tuple[tuple[str, Any], ...]  # (axis name, value), in axis order.
    seed: int
    config_index: int  # Position of the configuration in the grid.
    explicit: tuple[str, ...] = ()  # Study.explicit: base flags a --recipe does not change.
    # The data fingerprints already computed, shared by the trials of one `expand` (the
    # photos are read once per study run, not once per trial).
    fingerprints: dict = dataclasses.field(default_factory=dict, compare=False, hash=False,
                                           repr=False)

    @functools.cached_property  # A frozen trial: computed once.
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

    @functools.cached_property  # A frozen trial: computed once.
    def digest(self) -> str:
        text = json.dumps(sorted(self.id_flags().items()), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @functools.cached_property  # A frozen trial: computed once.
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

    @functools.cached_property  # A frozen trial: computed once.
    def group_id(self) -> str:
        """The configuration's id: the trial id without the seed (HParams groups by it)."""
        return f"{self.readable}-{self.digest}" if self.readable else self.digest

    @functools.cached_property  # A frozen trial: computed once.
    def trial_id(self) -> str:
        return (f"{self.readable}-s{self.seed}-{self.digest}" if self.readable
                else f"s{self.seed}-{self.digest}")

    @functools.cached_property  # A frozen trial: computed once.
    def trial_dir(self) -> str:
        return paths.trial_dir(self.study_dir, self.trial_id)

    def config(self, phase: str) -> Config:
        cache = self.__dict__.setdefault("_configs", {})  # A frozen trial: once per phase.
        if phase not in cache:
            cache[phase] = self._config(phase)
        return cache[phase]

    def _config(self, phase: str) -> Config:
        """The run configuration of one phase: an ordinary tapefit run in the trial's
        directory, with the --recipe's values resolved as train.py resolves them (a flag
        given explicitly, in the base flags or as an axis of this phase, wins)."""
        values = {**self.base.to_dict(), **self.common, **self.overrides(phase)}
        cache = values["feature_cache"]
        values.update(
            phase=phase, seed=self.seed, workdir=self.trial_dir, overwrite=False,
            # Trials that share backbone, weights, cut and data share one feature cache:
            # on disk, under the study's root.
            feature_cache="disk" if cache == "auto" else cache,
            feature_cache_dir=(self.base.feature_cache_dir
                               or paths.feature_cache_dir(self.study_dir)),
            # Decoded images likewise (keyed by the data): one copy for the study.
            image_cache_dir=(self.base.image_cache_dir
                             or paths.image_cache_dir(self.study_dir)))
        explicit = set(self.explicit) | {split_name(n)[1] for n, _ in self.assignment
                                         if split_name(n)[0] in (None, phase)}
        return resolve(values, explicit)

    def data_fingerprint(self, cfg: Config) -> str:
        """`input_pipeline.data_fingerprint(cfg)` (the content of the photos), computed
        once per data flags for the trials of one `expand`."""
        key = json.dumps(sorted(key_values(cfg, DATA).items()), default=str)
        if key not in self.fingerprints:
            from tapefit.flags.errors import TapefitError
            from tapefit.input_pipeline import data_fingerprint  # TensorFlow: only here.
            try:
                self.fingerprints[key] = data_fingerprint(cfg)
            except TapefitError as e:  # No data there: the trial's run fails with this line.
                self.fingerprints[key] = f"unreadable: {e}"
        return self.fingerprints[key]

    def identity(self, phase: str) -> dict:
        cache = self.__dict__.setdefault("_identities", {})  # Once per phase.
        if phase not in cache:
            cache[phase] = self._identity(phase)
        return cache[phase]

    def _identity(self, phase: str) -> dict:
        """The identity (flags/identity.py) the trial's `phase` run records: its flags,
        the content of its data, its seed and the identity of the phase it starts from.
        Reads the photos (once per `expand`): only where a trial runs or is keyed."""
        cfg = self.config(phase)
        earlier = [p for p in self.phases[:self.phases.index(phase)] if p != paths.EVALUATE_PHASE]
        if phase == paths.EVALUATE_PHASE:
            from tapefit.loops.train_lib import evaluation_data  # What evaluate scores on.
            trained = self.config(earlier[-1]) if earlier else cfg
            data_cfg = evaluation_data(cfg, trained)
            parent = self.identity(earlier[-1])["digest"] if earlier else None
            return identity_lib.evaluation_identity(data_cfg, cfg,
                                                    self.data_fingerprint(data_cfg), parent)
        parent = (self.identity("head")["digest"]
                  if phase == "finetune" and "head" in earlier and not cfg.init_checkpoint
                  else None)
        return identity_lib.identity(cfg, self.data_fingerprint(cfg), parent)

    def identities(self) -> dict:
        return {phase: self.identity(phase) for phase in self.phases}

    def phase_key(self, phase: str) -> str:
        """The key of the phase's shared run: its identity (what decides its result — its
        flags and data content, its seed, the phase before it; never the data's path).
        Trials with equal keys share the phase's run."""
        return self.identity(phase)["digest"][:12]

    def shared_dir(self, phase: str) -> str:
        """The work directory of the phase's shared run (its <phase> folder is the run)."""
        return paths.shared_dir(self.study_dir, f"{phase}-s{self.seed}-{self.phase_key(phase)}")

    def configs(self) -> dict:
        return {phase: self.config(phase) for phase in self.phases}

    def to_dict(self) -> dict:
        """trial.json: what the trial is, with the identity each of its phases must record."""
        return {"trial_id": self.trial_id, "group_id": self.group_id, "seed": self.seed,
                "phases": list(self.phases), "axes": {n: v for n, v in self.assignment},
                "id_flags": self.id_flags(),
                "configs": {p: c.to_dict() for p, c in self.configs().items()},
                "identity": self.identities(),
                "shared": {p: self.shared_dir(p) for p in self.phases}}


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
    fingerprints = {}  # One reading of the photos for every trial of this expansion.
    trials = [Trial(study_dir, study.base, study.phases, assignment, seed, index,
                    study.explicit, fingerprints)
              for seed in study.seeds for index, assignment in enumerate(grid)]
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise ConfigError("two configurations of the grid are the same run; drop the axis "
                          "value that repeats the base flags")
    return trials


def assignment_of(study: Study, values) -> tuple:
    """The ((name, value), ...) assignment of one value tuple per axis (as `configurations`)."""
    return tuple((n, x) for a, v in zip(study.axes, values, strict=True)
                 for n, x in zip(a.names, v, strict=True))


def baseline_assignment(study: Study) -> tuple:
    return assignment_of(study, study.baseline)


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


def read_small_text(path: str, what: str, limit: int = MAX_SWEEP_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes, or a one-line error: a
    FIFO, a device (/dev/zero), a folder or a huge file is refused, never read."""
    text, problem = files.read_small_text(path, limit)
    if text is None:
        raise ConfigError(f"{what}={path} {'is ' + problem if problem else 'does not exist'}; "
                          "pass the study's sweep file (small UTF-8 JSON)")
    return text


SWEEP_FILE_KEYS = {"phases": (str, list), "axes": (dict,), "seeds": (str, list),
                   "baseline": (str, dict), "flags": (dict,), "race": (bool, dict),
                   "flips": (str, list)}


def load_sweep_file(path: str, extra_keys: dict | None = None) -> dict:
    """A sweep file: {"phases", "axes": {name: [values]}, "seeds", "baseline", "flags",
    "race", "flips"} and `extra_keys` ({key: JSON types}: research/study.py's "settings");
    every problem is one line."""
    text = read_small_text(path, "--sweep_file")
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--sweep_file={path} is not JSON ({e.msg}, line {e.lineno}); fix the "
                          "file") from None
    except RecursionError:
        raise ConfigError(f"--sweep_file={path} is nested too deeply to be a study; fix the "
                          "file") from None
    known = {**SWEEP_FILE_KEYS, **(extra_keys or {})}
    if not isinstance(content, dict):
        raise ConfigError(f"--sweep_file={path} holds {files.json_type_problem(content, dict)}; "
                          f"a sweep file is {{{', '.join(sorted(known))}}}")
    unknown = sorted(set(content) - set(known))
    if unknown:
        raise ConfigError(f"--sweep_file={path}: unknown keys {unknown}; "
                          f"a sweep file has {', '.join(sorted(known))}")
    for key, kinds in known.items():
        if key in content and (problem := files.json_type_problem(content[key], kinds)):
            raise ConfigError(f"--sweep_file={path}: {key!r} is {problem}; fix the file")
    return content


def axes_from_file(content: dict, path: str) -> list[Axis]:
    axes = content.get("axes", {})
    if not isinstance(axes, dict):
        raise ConfigError(f"--sweep_file={path}: 'axes' must map a name to a list of values")
    out = []
    for label, values in axes.items():
        if not isinstance(values, list):
            raise ConfigError(f"--sweep_file={path}: axis {label!r} must be a list of values")
        nested = [v for v in values if isinstance(v, (dict, list))
                  and (isinstance(v, dict) or any(isinstance(x, (dict, list)) for x in v))]
        if nested:
            raise ConfigError(f"--sweep_file={path}: axis {label!r} has the value "
                              f"{_short(nested[0])}; a value is a number, string, boolean or "
                              "null (a paired axis: a list of them)")
        names = label.split("/")
        out.append(make_axis(names, [v if isinstance(v, list) else
                                     (v.split("/") if isinstance(v, str) and len(names) > 1
                                      else [v]) for v in values], label))
    return out
