"""The ranges of the entry points' own numeric flags (not `Config` fields: those declare
their range on the field), and the bounds both use.
"""
from __future__ import annotations

from tapefit.flags.fields import Range

# compare.py: relative tolerance between the loops when not --deterministic.
DEFAULT_TOLERANCE = 1e-5

# Every numeric flag and its range (`check_number`): one line naming the fix, before
# anything is written. Upper bounds are where a value stops making sense for this
# program (and would fail late: an overflow inside TensorFlow, memory, a hang), not
# what a machine can hold; `check_memory` adds what depends on two flags.
_MANY = 100_000  # Epochs, patience, steps per execution: far beyond any real run.
FLOAT32_MAX = 3.4028234663852886e38  # Rates live in float32 variables.
# Entry-point flags that are not part of Config (loops/entry.py, compare.py, sweep.py);
# every Config field's range is declared on the field (`_flag(range=...)`), and `RANGES`
# (built below `Config`) holds both.
ENTRY_POINT_RANGES = {
    "logical_cpus": Range(0, 16, 2, note="0 or 1: the CPU as one device"),
    "tolerance": Range(0.0, 1.0, DEFAULT_TOLERANCE, note="relative difference"),
    # sweep.py.
    "parallel": Range(1, 1024, 2, note="trials at once"),
    "min_seeds": Range(2, _MANY, 3, note="a paired test needs two seeds"),
    "max_seeds": Range(2, _MANY, 5, note="at least --min_seeds"),
    "race_alpha": Range(0.0, 1.0, 0.05, low_open=True, high_open=True),
}
# Entry-point flags in RANGES; every other entry is a Config field.
ENTRY_POINT_NUMBERS = tuple(ENTRY_POINT_RANGES)
# What one process may spend on data that lives in memory (`check_memory`).
MEMORY_LIMIT_BYTES = 8 * 2**30
