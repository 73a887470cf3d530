"""The field machinery of `Config` (flags/config.py): how a field declares itself once
(`flag`: default, --help text and heading, choices, numeric range, roles), the roles and
--help headings a declaration may name, and `Range`, the values a numeric flag may take.

No TensorFlow, and nothing of tapefit but the error type.
"""
from __future__ import annotations

import dataclasses
import difflib
import urllib.parse

from tapefit.flags.errors import ConfigError

REMOTE_MONITOR_SCHEMES = ("http", "https")


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric flag may take: [low, high] (`low_open`/`high_open`: the
    bound itself excluded), or `off` (a value outside the range that turns the tool
    off, e.g. --clipnorm=0). `example` goes into the error's "pass e.g."; `note`
    says why, where the range alone does not."""

    low: float
    high: float
    example: object
    low_open: bool = False
    high_open: bool = False
    off: object = None
    note: str = ""

    def contains(self, value) -> bool:
        if value == self.off and self.off is not None:
            return True
        return ((value > self.low if self.low_open else value >= self.low)
                and (value < self.high if self.high_open else value <= self.high))

    def text(self) -> str:
        interval = (f"{'(' if self.low_open else '['}{_bound(self.low)}, "
                    f"{_bound(self.high)}{')' if self.high_open else ']'}")
        if self.off is None:
            return f"in {interval}"
        return f"{_bound(self.off)} (off) or in {interval}"


def _bound(value) -> str:
    """2**32 rather than 4294967296, 1e-06 and 1 rather than 1e-06 and 1.0."""
    if isinstance(value, int) and value >= 2**16 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)



# ---- one declaration per flag ---------------------------------------------------------
# Each `Config` field declares itself once (`_flag`): its --help text and heading, its
# choices, its numeric range, and its roles. Everything that treats a set of fields
# alike asks `fields_with(ROLE)` (field order) instead of keeping its own list, so a new
# flag is one declaration here (plus what it does).
# Roles (their users in brackets):
ARCHITECTURE = "architecture"  # Defines the network: finetune/evaluate match head's
#                                (loops/train_lib.py, research/grid.py).
DATA = "data"  # Decides which examples a run sees: in `input_pipeline.data_fingerprint`,
#                so caches and resumption follow it.
EVALUATION_DATA = "evaluation_data"  # --phase=evaluate takes it from its command line
#                                      when given, else the trained run's (train_lib).
SPLIT = "split"  # Decides the test split's examples and their order (loops/predictions.py).
DATA_ERROR = "data_error"  # Out of range: a DataError (fixed along with the data).
PATH = "path"  # Holds a path: compared as a real path (loops/rundir/run_dir.py).
RESUMABLE = "resumable"  # May change between a run and its resumption (loops/rundir/run_dir.py,
#                          research/grid.py): changes no result.
REPEATED = "repeated"  # Repeated in a later phase's printed command (loops/training/runners.py).
FINDER = "finder"  # The learning-rate finder's curve depends on it (loops/lr_find.py).
NOT_IN_ID = "not_in_id"  # Changes no trial's result: never in a trial id, never an axis
#                          (research/grid.py).
ROLES = (ARCHITECTURE, DATA, EVALUATION_DATA, SPLIT, DATA_ERROR, PATH, RESUMABLE, REPEATED,
         FINDER, NOT_IN_ID)
# `--help` headings (flags/definitions.py), in order; each field names one.
G_PHASE, G_MODEL, G_DATA = "phase and paths", "model", "data"
G_OPTIMISATION, G_REGULARISATION = "optimisation and schedules", "regularisation"
G_HOOKS, G_SPEED, G_RELIABILITY = "hooks", "speed", "reliability"
G_DISTRIBUTION, G_OUTPUT = "distribution", "output"
GROUP_HEADINGS = (G_PHASE, G_MODEL, G_DATA, G_OPTIMISATION, G_REGULARISATION, G_HOOKS,
                  G_SPEED, G_RELIABILITY, G_DISTRIBUTION, G_OUTPUT)



def flag(default, group: str, help: str, roles=(), choices=None, range=None,  # noqa: A002
          keyed_at_default=True):
    """A `Config` field and its declaration (`dataclasses.field` metadata): `help` and
    `group` for --help, `choices` (validated by `Config`, listed in --help), `range`
    (`RANGES`, `check_number`), `roles` (`fields_with`). `keyed_at_default=False`: at
    its default the field is left out of data keys (`data_key_values`), so the runs
    and caches made before the field existed keep their keys."""
    unknown = [role for role in roles if role not in ROLES]
    if unknown or group not in GROUP_HEADINGS:
        raise ValueError(f"unknown role {unknown} or --help group {group!r}")
    metadata = {"help": help, "group": group, "roles": frozenset(roles)}
    if choices is not None:
        metadata["choices"] = choices
    if range is not None:
        metadata["range"] = range
    if not keyed_at_default:
        metadata["keyed_at_default"] = False
    return dataclasses.field(default=default, metadata=metadata)



def check_url(name: str, url: str) -> None:
    """http(s)://host[:port][/path] only: no file://, ftp:// or other schemes."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is no number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in REMOTE_MONITOR_SCHEMES or not parts.hostname:
        raise ConfigError(f"--{name}={url!r} is not an http:// or https:// URL with a host; "
                          f"pass e.g. --{name}=http://localhost:9000")


def check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"unknown --{name}={value!r}; choose one of: {', '.join(choices)}")



def did_you_mean(name: str, known) -> str:
    """` (did you mean --NAME?)` for the closest of `known`, or ""."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean --{close[0]}?)" if close else ""
