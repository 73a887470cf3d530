"""What every entry point does around its command: one-line errors, --debug, logical CPUs."""
from __future__ import annotations

import sys

from absl import app, flags

from flags.definitions import config_from_flags
from flags.errors import TapefitError


def run_command(argv, command, flag_values=flags.FLAGS):
    """Entry-point wrapper: no positional arguments; splits the CPU if asked; turns a
    user or run error (`flags.errors.TapefitError`) into one `error: ...` line and exit
    code 1 (`--debug`: the traceback instead).

    `command(cfg)` does the work and returns its exit code (None for 0).
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from loops.strategy import split_cpu

    debug = flag_values["debug"].value if "debug" in flag_values else False
    try:
        cfg = config_from_flags(flag_values)
        split_cpu(flag_values.logical_cpus)
        return command(cfg)
    except TapefitError as e:
        if debug:
            raise
        sys.exit(f"error: {e}")
