"""absl flag definitions, generated from `Config` so the two never drift apart.

Each flag's help text, `--help` heading and choices are declared once, on its `Config`
field (flags/config.py `_flag`); `HELP`, `GROUPS` and `_CHOICES` here are read from
those declarations, plus the entry-point flags that are not part of `Config`.

`--help` (and `--helpshort`) list these flags grouped by purpose (`GROUPS`), each
with its default; `--helpfull` keeps absl's full per-module listing.
"""
from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from tapefit.flags import config as config_lib

_FIELDS = dataclasses.fields(config_lib.Config)
# Each flag's help, `--help` heading and choices are declared on its `Config` field
# (flags/config.py `_flag`); these are read from there. Entry-point flags (not part of
# `Config`) add theirs here.
HELP = {**{f.name: f.metadata["help"] for f in _FIELDS},
        "logical_cpus": "Split the CPU into this many logical devices (to try "
                        "--strategy=mirrored without GPUs)."}

# `--help` headings, in order, and the flags under each (field order). Every `Config`
# field must be in exactly one group (`define_flags` raises otherwise); entry-point
# flags may be too.
_ENTRY_POINT_GROUPS = {config_lib.G_DISTRIBUTION: ("logical_cpus",),
                       config_lib.G_OUTPUT: ("json",)}
GROUPS = {heading: tuple(f.name for f in _FIELDS if f.metadata["group"] == heading)
          + _ENTRY_POINT_GROUPS.get(heading, ())
          for heading in config_lib.GROUP_HEADINGS}

_CHOICES = {f.name: f.metadata["choices"] for f in _FIELDS if "choices" in f.metadata}


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines one flag per `Config` field, with the field's default.

    Raises `ValueError` (a programming error) when a field has no help text or no
    `--help` group.
    """
    check_groups()
    for field in dataclasses.fields(config_lib.Config):
        name, default, kind = field.name, field.default, field.type
        help_text = HELP[name]
        if name in _CHOICES:
            # Validated by Config, whose error is one line that lists the choices.
            flags.DEFINE_string(name, default, f"{help_text} One of: {', '.join(_CHOICES[name])}.",
                                flag_values=flag_values)
        elif kind == "bool":
            flags.DEFINE_boolean(name, default, help_text, flag_values=flag_values)
        elif kind == "int":
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif name == "augment":  # --augment, --noaugment or --augment=flip,mixup,...
            flags.DEFINE_flag(flags.Flag(_AugmentParser(), flags.ArgumentSerializer(), name,
                                         default, help_text, boolean=True),
                              flag_values=flag_values)
        elif name == "learning_rate":  # A number or "auto" (Config converts it).
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
        elif kind in ("float", "Optional[float]"):
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
    flags.DEFINE_integer("logical_cpus", 0, HELP["logical_cpus"], flag_values=flag_values)


class _AugmentParser(flags.ArgumentParser):
    """--augment: a boolean-style flag (--augment, --noaugment) that also takes a comma
    list of augmentations; the value is `Config`'s canonical string."""

    def parse(self, argument):
        try:
            return config_lib.normalise_augment(argument)
        except config_lib.ConfigError:
            return argument  # Config rejects it with its one-line error.

    def flag_type(self):
        return "string"


def check_groups(fields=None) -> None:
    """Every `Config` field has a `HELP` text and exactly one `GROUPS` heading."""
    names = [f.name for f in dataclasses.fields(config_lib.Config)] if fields is None else fields
    grouped = [name for members in GROUPS.values() for name in members]
    for name in names:
        if name not in HELP:
            raise ValueError(f"Config field {name!r} has no help text: declare it with "
                             "_flag(help=...) in flags/config.py")
        if grouped.count(name) != 1:
            raise ValueError(f"Config field {name!r} is in {grouped.count(name)} --help groups "
                             "(GROUPS): declare one with _flag(group=...) in flags/config.py")


def define_output_flags(flag_values=flags.FLAGS) -> None:
    """Entry-point output options (not part of `Config`: they change no result)."""
    flags.DEFINE_boolean("json", False, "Print the phase's summary as JSON (as written to "
                         "<run>/summary.json) instead of the human summary.",
                         flag_values=flag_values)


def grouped_help(flag_values=flags.FLAGS, module=None, groups=None, omit=()) -> str:
    """The flags of `--help`: first the command's own headings (`groups`, a mapping of
    headings to flag names), then under each `GROUPS` heading the defined flags of that
    group, then any other key flag of `module` (default: the main module) under "other";
    never the flags in `omit` (those the command refuses)."""
    groups = {**(groups or {}), **{h: n for h, n in GROUPS.items() if h not in (groups or {})}}
    module = sys.argv[0] if module is None else module
    shown, sections = {id(flag_values[name]) for name in omit if name in flag_values}, []
    for heading, names in groups.items():
        members = [flag_values[name] for name in names
                   if name in flag_values and id(flag_values[name]) not in shown]
        shown.update(id(f) for f in members)
        if members:
            sections.append((heading, members))
    rest = sorted((f for f in flag_values.get_key_flags_for_module(module)
                   if id(f) not in shown), key=lambda f: f.name)
    if rest:
        sections.append(("other", rest))
    lines = []
    for heading, members in sections:
        lines.append(f"\n{heading}:")
        for flag in members:
            lines.append(_flag_help(flag))
    return "\n".join(lines) + "\n"


def _flag_help(flag) -> str:
    """One flag as absl's help shows it: `--[no]name: help` (`--[no]` for a true/false
    flag only: --augment, which also takes --augment/--noaugment, is a string) and a
    readable `(default: ...)`: true, 0.001, 'head', none (the empty string), unset."""
    kind = flag.flag_type()
    name = f"--[no]{flag.name}" if kind == "bool" else f"--{flag.name}"
    about = flag.help.removesuffix(_ABSL_MULTI)  # Ours say "repeat" where they mean it.
    text = flags.text_wrap(f"{name}: {about}", indent="    ", firstline_indent="  ")
    return text + "\n" + flags.text_wrap(f"(default: {_default_text(flag)})", indent="    ")


# What absl appends to the help of a DEFINE_multi_* flag.
_ABSL_MULTI = ";\n    repeat this option to specify a list of values"


def _default_text(flag) -> str:
    value = flag.default
    if value is None or value == []:
        return "unset"
    if flag.flag_type() == "bool":
        return "true" if value else "false"
    if value == "":
        return "none"
    if isinstance(value, (int, float)):
        return str(value)
    return flag.default_as_str or "unset"


class _GroupedHelpFlag(app.HelpFlag):
    """absl's `--help`/`-?`, printing the command's docstring and `grouped_help()`
    instead of the main module's docstring and flags."""

    groups = None
    omit = ()
    doc = None

    def __init__(self):
        super().__init__()
        self.allow_override = True  # Replaces absl's own (already defined) help flag.

    def parse(self, arg):
        if self._parse(arg):
            doc = (self.doc if self.doc is not None
                   else sys.modules["__main__"].__doc__ or "").strip("\n").rstrip()
            sys.stdout.write(f"{doc}\n\nflags:\n")
            sys.stdout.write(grouped_help(groups=self.groups, omit=self.omit))
            sys.stdout.write("\nTry --helpfull to get a list of all flags (absl's included).\n")
            sys.stdout.flush()
            sys.exit(1)  # As absl's --help and --helpfull.


class _GroupedHelpshortFlag(_GroupedHelpFlag):
    NAME = "helpshort"
    SHORT_NAME = None


def define_help_flags(groups=None, omit=(), doc=None) -> None:
    """Makes `--help`/`--helpshort` print `doc` and the flags grouped by purpose (call at
    import time of an entry point, after its flags are defined or not: the help is built
    when it is asked for). `groups`: the command's own headings -> flag names, listed
    first (e.g. a sweep's own); `omit`: flags the command refuses, not listed; `doc`: the
    command module's docstring (its `__doc__`: under the `tapefit` command `__main__` is
    the dispatcher), default the `__main__` module's."""
    app.define_help_flags()  # absl's first (idempotent), then ours over them.
    for flag_class in (_GroupedHelpFlag, _GroupedHelpshortFlag):
        flag = flag_class()
        flag.groups, flag.omit, flag.doc = groups, tuple(omit), doc
        flags.DEFINE_flag(flag)


def config_from_flags(flag_values=flags.FLAGS, **overrides) -> config_lib.Config:
    """The frozen config for the parsed flags (the only place flags are read)."""
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(config_lib.Config)}
    values.update(overrides)
    # --recipe: its settings for flags not given explicitly (config.json records them).
    explicit = {name for name in values if flag_values[name].present} | set(overrides)
    return config_lib.resolve(values, explicit)
