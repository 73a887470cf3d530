"""`python train.py` (predict, compare, sweep) run as a script by its path: the `tapefit`
that script imports must be the folder holding it (a checkout installed with
`pip install -e .`, or an installed copy), never another copy, never a missing one.
Imported only by the four scripts, under `if __name__ == "__main__" and not __package__`."""
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_FIX = f"run `python -m pip install -e {_HERE}`"

try:
    _spec = importlib.util.find_spec("tapefit")
except (ImportError, ValueError):
    _spec = None
if _spec is None or not _spec.submodule_search_locations:
    sys.exit(f"error: tapefit is not installed; {_FIX}")
if os.path.realpath(_HERE) not in map(os.path.realpath, _spec.submodule_search_locations):
    sys.exit(f"error: {sys.argv[0]} is in {_HERE}, but `import tapefit` finds "
             f"{list(_spec.submodule_search_locations)[0]}; {_FIX}, or run that copy's "
             "`tapefit` command")
