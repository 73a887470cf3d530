"""What every entry point does around its command: one-line errors, --debug, logical CPUs,
and the --flagfile files checked before absl reads them."""
from __future__ import annotations

import os
import sys

from absl import app, flags

from tapefit.flags.config import check_number
from tapefit.flags.definitions import config_from_flags
from tapefit.flags.errors import ConfigError, TapefitError, escape_controls
from tapefit.layout.atomic import read_small_text

# A flag file is a few lines of flags; more is not one (and absl reads it whole).
MAX_FLAGFILE_BYTES = 1 << 20
MAX_FLAGFILE_DEPTH = 16  # Nested --flagfile= lines.
_FLAGFILE = ("--flagfile", "-flagfile")


def app_run(main, argv=None) -> None:
    """absl's `app.run(main)`, after every `--flagfile` (also those named inside flag
    files) is checked: a regular file of at most `MAX_FLAGFILE_BYTES`, UTF-8 text. A FIFO,
    a device (/dev/zero) or a huge file would make absl hang or read until memory runs
    out; instead one `error: ...` line and exit code 1."""
    args = sys.argv if argv is None else argv
    try:
        check_flagfiles(args[1:])
    except ConfigError as e:
        sys.exit(f"error: {escape_controls(str(e))}")
    app.run(main, argv)


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
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
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
