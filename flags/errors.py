"""The error types every tapefit entry point prints as one line (exit code 1, no traceback).

- `ConfigError`: something the user fixes on the command line (a flag, a path).
- `DataError`: something the user fixes in the data (a folder, a file); a ConfigError.
- `RunError`: a failure while running that no flag caused (a full disk, a run that
  diverged, another process holding the run directory).
"""
from __future__ import annotations


class TapefitError(Exception):
    """Base of the one-line errors; its message names the fix."""


class ConfigError(TapefitError, ValueError):
    """A configuration problem the user fixes on the command line."""


class DataError(ConfigError):
    """A data problem the user fixes on the command line or on disk."""


class RunError(TapefitError, RuntimeError):
    """A run-time failure (full disk, divergence, a locked run directory)."""
