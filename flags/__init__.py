"""Command-line flags (absl) and the frozen run configuration they resolve to.

Only entry points (train.py, predict.py, compare.py) call `define_flags()` and
`config_from_flags()`; everything else receives a `Config`.
"""
from tapefit.flags.config import PHASES, Config, ConfigError

__all__ = ["Config", "ConfigError", "PHASES"]
