"""What every entry point does around its command: one-line errors (also for a flag absl
cannot parse), --debug, logical CPUs, and the --flagfile files checked before absl reads
them."""
from __future__ import annotations

import os
import re
import sys

from absl import app, flags

from tapefit.flags.config import RANGES, check_choice, check_number
from tapefit.flags.definitions import config_from_flags
from tapefit.flags.errors import ConfigError, TapefitError, escape_controls
from tapefit.flags.fields import did_you_mean
from tapefit.layout.atomic import read_small_text

# A flag file is a few lines of flags; more is not one (and absl reads it whole).
MAX_FLAGFILE_BYTES = 1 << 20
MAX_FLAGFILE_DEPTH = 16  # Nested --flagfile= lines.
_FLAGFILE = ("--flagfile", "-flagfile")


def app_run(main, argv=None) -> None:
    """absl's `app.run(main)`, after every `--flagfile` (also those named inside flag
    files) is checked: a regular file of at most `MAX_FLAGFILE_BYTES`, UTF-8 text. A FIFO,
    a device (/dev/zero) or a huge file would make absl hang or read until memory runs
    out; instead one `error: ...` line and exit code 1. So is a flag absl cannot parse
    (`parse_flags`): an unknown one, a value of the wrong type."""
    args = sys.argv if argv is None else argv
    try:
        check_flagfiles(args[1:])
    except ConfigError as e:
        sys.exit(f"error: {escape_controls(str(e))}")
    app.run(main, argv, flags_parser=parse_flags)


def parse_flags(args, flag_values=flags.FLAGS) -> list[str]:
    """absl's `flag_values(args)` (app.run's `flags_parser`), with one `error: ...` line
    and exit code 1 instead of absl's two-line "FATAL Flags parsing error" for an
    unknown flag (with "did you mean") or a value the flag's type refuses."""
    try:
        return flag_values(args)
    except flags.UnrecognizedFlagError as e:
        message = unknown_flag(e.flagname, flag_values)
    except flags.IllegalFlagValueError as e:
        message = illegal_value(str(e), flag_values)
    except flags.Error as e:  # "Missing value for flag --epochs", a validator, ...
        message = str(e)
        missing = re.fullmatch(r"Missing value for flag -+([^=]+)", message)
        if missing and missing.group(1) in flag_values:
            name = missing.group(1)
            message = f"--{name} needs a value; pass e.g. --{name}={_example(flag_values[name])}"
    except ValueError as e:  # absl: "--noNAME=V does not take an argument".
        message = str(e)
        took = re.fullmatch(r"-+no([^=]+)=.* does not take an argument", message)
        if took:
            name = took.group(1)
            message = f"--no{name} takes no value; pass --no{name} or --{name}=false"
    sys.exit(f"error: {escape_controls(' '.join(message.split()))}")


def unknown_flag(name: str, flag_values=flags.FLAGS) -> str:
    """`unknown flag --NAME (did you mean --NAME?)`: among every defined flag, and the
    --noNAME form of the boolean ones."""
    known = set()
    for flag_name in flag_values:
        known.add(flag_name)
        if flag_values[flag_name].boolean:
            known.add(f"no{flag_name}")
    return f"unknown flag --{name}{did_you_mean(name, known)}"


def illegal_value(message: str, flag_values=flags.FLAGS) -> str:
    """absl's `flag --NAME=VALUE: why` as one line naming the fix."""
    found = re.fullmatch(r"flag --([^=]+)=(.*?): (.*)", message, re.DOTALL)
    if not found or found.group(1) not in flag_values:
        return message
    name, value = found.group(1), found.group(2)
    flag = flag_values[name]
    kind = flag.flag_type()
    example = _example(flag)
    if flag.boolean:
        return (f"--{name}={value} must be true or false; pass --{name} or --no{name}")
    if kind == "int":
        return f"--{name}={value} must be a whole number; pass e.g. --{name}={example}"
    if kind == "float":
        return f"--{name}={value} must be a number; pass e.g. --{name}={example}"
    choices = getattr(flag.parser, "enum_values", None)
    if choices:
        try:
            check_choice(name, value, choices)
        except ConfigError as e:
            return str(e)
    return f"--{name}={value}: {found.group(3)}"


def _example(flag) -> str:
    """A value `flag` takes: its range's example, else its default, else 1."""
    if flag.name in RANGES:
        return str(RANGES[flag.name].example)
    if flag.default not in (None, "", []) and not flag.boolean:
        return flag.default_as_str.strip("'")
    return "1"


def _flagfile_names(args) -> list[str]:
    """The --flagfile values in `args` as absl reads them (`--flagfile=F`,
    `--flagfile F`), up to a `--` that ends the flags."""
    names, it = [], iter(args)
    for arg in it:
        if arg == "--":
            break
        name, sep, value = arg.partition("=")
        if name in _FLAGFILE:
            if not sep:
                value = next(it, "")
            if value:
                names.append(value)
    return names


def check_flagfiles(args, depth: int = 0, seen=None) -> None:
    """Raises a one-line `ConfigError` for a --flagfile in `args` that is not a
    readable regular file of UTF-8 text within `MAX_FLAGFILE_BYTES`; follows the
    --flagfile lines inside them (absl skips a file it is already reading)."""
    seen = set() if seen is None else seen
    for name in _flagfile_names(args):
        path = os.path.expanduser(name)
        if os.path.realpath(path) in seen:
            continue
        if depth >= MAX_FLAGFILE_DEPTH:
            raise ConfigError(f"--flagfile={name} is nested more than {MAX_FLAGFILE_DEPTH} "
                              "deep; name the flags in fewer files")
        lines = _read_flagfile(name, path)
        check_flagfiles([line.strip() for line in lines], depth + 1,
                        seen | {os.path.realpath(path)})


def _read_flagfile(name: str, path: str) -> list[str]:
    text, problem = read_small_text(path, MAX_FLAGFILE_BYTES)
    if text is None:
        raise ConfigError(f"--flagfile={name} {'is ' + problem if problem else 'does not exist'}"
                          "; pass a file of flags, one per line")
    return text.splitlines()


def run_command(argv, command, flag_values=flags.FLAGS):
    """Entry-point wrapper: no positional arguments; splits the CPU if asked; turns a
    user or run error (`flags.errors.TapefitError`) into one `error: ...` line and exit
    code 1 (`--debug`: the traceback instead); control characters in it (a file name
    with a newline) are escaped, so that it stays one line.

    `command(cfg)` does the work and returns its exit code (None for 0).
    """
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {escape_controls(' '.join(argv[1:]))}; "
                 "every setting is a --flag (--help lists them)")
    from tapefit.loops.training.strategy import split_cpu

    debug = flag_values["debug"].value if "debug" in flag_values else False
    try:
        cfg = config_from_flags(flag_values)
        check_number("logical_cpus", flag_values.logical_cpus, "int")
        split_cpu(flag_values.logical_cpus)
        return command(cfg)
    except TapefitError as e:
        if debug:
            raise
        sys.exit(f"error: {escape_controls(str(e))}")
