"""The error types every tapefit entry point prints as one line (exit code 1, no traceback).

- `ConfigError`: something the user fixes on the command line (a flag, a path).
- `DataError`: something the user fixes in the data (a folder, a file); a ConfigError.
- `RunError`: a failure while running that no flag caused (a full disk, a run that
  diverged, another process holding the run directory).
"""
from __future__ import annotations

import os
import unicodedata


class TapefitError(Exception):
    """Base of the one-line errors; its message names the fix."""


class ConfigError(TapefitError, ValueError):
    """A configuration problem the user fixes on the command line."""


class DataError(ConfigError):
    """A data problem the user fixes on the command line or on disk."""


class RunError(TapefitError, RuntimeError):
    """A run-time failure (full disk, divergence, a locked run directory)."""


_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape_controls(text, backslash: bool = False) -> str:
    """`text` (a str, or a file name as str or bytes) as one printable line: tab, newline
    and carriage return as `\\t`, `\\n`, `\\r`, other control and format characters (and
    line separators) as `\\xNN` / `\\uNNNN`, bytes that are not UTF-8 as `\\xNN`;
    `backslash`: a backslash as two, so that distinct names stay distinct."""
    try:
        text = os.fsencode(text).decode("utf-8", "surrogateescape")
    except UnicodeError:  # A str with a lone surrogate that is no escaped byte.
        text = str(text)
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\" and backslash:
            out.append("\\\\")
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # A byte that is not UTF-8 (surrogateescape).
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
