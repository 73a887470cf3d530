"""How a study is run and reported, besides its grid: one `StudyOptions`.

`sweep.py` builds it from its flags in one place (`from_flags`), `tapefit.study` from
its keywords; research/study.py's `prepare`, `execute`, `run` and `report_only` take
it. Pure Python (no TensorFlow).

Two kinds of fields:
- the study's *settings*, what a report depends on: `select_by` and the race's
  `min_seeds`, `max_seeds`, `race_alpha` (and the --flips pairs, kept as before).
  They are part of the study: saved in `<study>/sweep.json` ("settings":
  {"select_by": ...}; the race in its "race": {"min_seeds", "max_seeds", "alpha"}) and
  reused by every later run and by `--report_only`. A value given again (command line,
  sweep file, keyword) that differs from the stored one is refused in one line
  (`merge_stored`); `max_seeds` may change (a race may grow by seeds; research/race.py
  keeps its decided rounds);
- how this process runs: shard, parallel, share_phases, retry_failed, debug, progress,
  report_only, worker_args. Never stored.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

from tapefit.flags.errors import ConfigError

# --select_by: the validation metric that chooses the best configuration (and that a
# race compares) -> higher is better (research/report.py SELECT_BY).
SELECT_BY = {"val_accuracy": True, "val_loss": False}
DEFAULT_SELECT_BY = "val_accuracy"
# sweep.json's key of the settings that are not the race's ("race" holds those).
SETTINGS_KEY = "settings"
STORED_SETTINGS = ("select_by",)
# The race's fields: sweep.json's "race" key -> the option (and flag) name.
RACE_KEYS = {"min_seeds": "min_seeds", "max_seeds": "max_seeds", "alpha": "race_alpha"}
# Race settings that may differ from the stored ones (the race keeps its history).
MAY_CHANGE = ("max_seeds",)
# The flags of sweep.py that are settings (their presence makes them `given`).
SETTING_FLAGS = ("select_by", "race", "min_seeds", "max_seeds", "race_alpha")
# sweep.py's flags that are options of a run, not of the study.
RUN_FLAGS = ("parallel", "share_phases", "retry_failed", "debug", "progress",
             "report_only")


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    select_by: str = DEFAULT_SELECT_BY
    race: bool = False
    min_seeds: int = 3
    max_seeds: Optional[int] = None
    race_alpha: float = 0.05
    flips: tuple[str, ...] = ()  # "CONFIGURATION vs BASELINE" texts (--flips).
    shard: tuple[int, int] = (0, 1)
    parallel: int = 1
    share_phases: bool = True
    retry_failed: bool = False
    debug: bool = False
    progress: bool = True
    report_only: bool = False
    worker_args: tuple[str, ...] = ()  # Flags every --parallel worker gets.
    # The settings given explicitly (flag present, keyword not its default): only these
    # are compared with the stored ones; the others take the stored values.
    given: frozenset = frozenset()

    def __post_init__(self):
        if self.select_by not in SELECT_BY:
            raise ConfigError(f"unknown --select_by={self.select_by!r}; choose one of: "
                              f"{', '.join(SELECT_BY)}")

    @property
    def higher_is_better(self) -> bool:
        return SELECT_BY[self.select_by]

    def race_settings(self):
        """The `grid.Race` of these options (None: no race)."""
        from tapefit.research import grid
        return grid.Race(self.min_seeds, self.max_seeds, self.race_alpha) if self.race else None

    def settings(self) -> dict:
        """What sweep.json's "settings" holds."""
        return {name: getattr(self, name) for name in STORED_SETTINGS}

    def replace(self, **changes) -> "StudyOptions":
        return dataclasses.replace(self, **changes)


def from_flags(flag_values) -> StudyOptions:
    """sweep.py's flags as options: the one place they are read for a study."""
    from tapefit.research import grid
    given = frozenset(n for n in SETTING_FLAGS if flag_values[n].present)
    if not flag_values.race and given - {"race", "select_by"}:
        raise ConfigError("--min_seeds, --max_seeds and --race_alpha set up a race; pass "
                          "--race as well")
    return StudyOptions(
        select_by=flag_values.select_by, race=flag_values.race,
        min_seeds=flag_values.min_seeds, max_seeds=flag_values.max_seeds,
        race_alpha=flag_values.race_alpha, flips=tuple(flag_values.flips),
        shard=grid.parse_shard(flag_values.shard),
        **{n: flag_values[n].value for n in RUN_FLAGS},
        worker_args=tuple([f"--logical_cpus={flag_values.logical_cpus}"]
                          if flag_values.logical_cpus else [])
        + (("--debug",) if flag_values.debug else ()),
        given=given)


def from_keywords(**values) -> StudyOptions:
    """The Python API's keywords as options: a setting is `given` when it differs from
    its default (a keyword left at its default takes the stored value)."""
    defaults = StudyOptions()
    given = frozenset(n for n in SETTING_FLAGS if n in values
                      and values[n] != getattr(defaults, n))
    return StudyOptions(**values, given=given)


def check_settings(value, where: str) -> dict:
    """A sweep file's (or sweep.json's) "settings": {"select_by": ...}, or one line."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: \"settings\": {_json(value)} must be an object, e.g. "
                          '{"select_by": "val_accuracy"}')
    unknown = sorted(set(value) - set(STORED_SETTINGS))
    if unknown:
        raise ConfigError(f"{where}: \"settings\" has the unknown key {_json(unknown[0])}; "
                          f"it holds {', '.join(map(_json, STORED_SETTINGS))}")
    select_by = value.get("select_by", DEFAULT_SELECT_BY)
    if select_by not in SELECT_BY:
        raise ConfigError(f"{where}: \"settings\": {{\"select_by\": {_json(select_by)}}}: "
                          f"\"select_by\" must be one of {', '.join(map(_json, SELECT_BY))}")
    return dict(value)


def check_race(value, where: str):
    """A sweep file's "race" with its values' JSON types checked: one line quoting the
    value as JSON and naming the key as a key (grid.race_from checks the rest)."""
    if not isinstance(value, dict):
        return value
    kinds = {"min_seeds": ("an integer", lambda v: _is_int(v)),
             "max_seeds": ("an integer or null", lambda v: v is None or _is_int(v)),
             "alpha": ("a number", lambda v: _is_number(v))}
    for key, (kind, ok) in kinds.items():
        if key in value and not ok(value[key]):
            raise ConfigError(f"{where}: \"race\": {_json(value)}: {_json(key)} must be "
                              f"{kind}, got {_json(value[key])}")
    return value


def merge_stored(options: StudyOptions, stored: dict | None, stored_race: dict | None,
                 file_settings: dict | None, file_race, where: str) -> StudyOptions:
    """The options with the study's stored settings: a setting given (flag or keyword,
    else the sweep file's) that differs from the stored one is refused in one line;
    one not given takes the stored value (then the sweep file's, then the default).

    `stored`: sweep.json's "settings" (None: none stored, an older study); `stored_race`:
    sweep.json's "race" (a dict, or None); `file_*`: the --sweep_file's."""
    changes = {}
    # select_by: given > the sweep file's > stored > default.
    file_settings = file_settings or {}
    for name in STORED_SETTINGS:
        if name in options.given:
            value, source = getattr(options, name), f"--{name}={getattr(options, name)}"
        elif name in file_settings:
            value = file_settings[name]
            source = f"the sweep file's \"settings\": {{{_json(name)}: {_json(value)}}}"
        elif stored and name in stored:
            changes[name] = stored[name]
            continue
        else:
            continue
        if stored and name in stored and stored[name] != value:
            raise ConfigError(
                f"{source}, but the study in {where} has {name}={stored[name]} (its settings "
                f"are part of it); leave --{name} out (or pass --{name}={stored[name]}), or "
                "run the other analysis as a new study in another --workdir")
        changes[name] = value
    # The race: on with --race or the sweep file's "race"; each field given > the sweep
    # file's > stored > default.
    file_race_dict = file_race if isinstance(file_race, dict) else {}
    race_on = options.race or bool(file_race)
    changes["race"] = race_on
    if race_on:
        stored_race = stored_race if isinstance(stored_race, dict) else {}
        for key, name in RACE_KEYS.items():
            if name in options.given:
                value, source = getattr(options, name), f"--{name}={getattr(options, name)}"
            elif key in file_race_dict:
                value = file_race_dict[key]
                source = f"the sweep file's \"race\": {{{_json(key)}: {_json(value)}}}"
            elif key in stored_race:
                changes[name] = stored_race[key]
                continue
            else:
                continue
            if key in stored_race and stored_race[key] != value and key not in MAY_CHANGE:
                raise ConfigError(
                    f"{source}, but the race in {where} has {key}={stored_race[key]} (its "
                    f"decided rounds used it); leave --{name} out (or pass --{name}="
                    f"{stored_race[key]}), or race anew in another --workdir")
            changes[name] = value
    return dataclasses.replace(options, **changes)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:80] + "…"
