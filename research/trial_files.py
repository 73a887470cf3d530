"""What a trial's files say, read only (no TensorFlow, no lock, nothing written): whether
a phase is done, the trial's status.json, its state, a phase's log.csv, a divergence,
its trial.json. The report, the race and the runner read trials through this module."""
from __future__ import annotations

import csv
import math
import os

from tapefit.flags.config import Config
from tapefit.flags.errors import RunError, TapefitError
from tapefit.layout import paths
from tapefit.layout.atomic import read_json_or_none

TRIAL_JSON, STATUS_JSON = paths.TRIAL_JSON, paths.STATUS_JSON

FINISHED, FAILED, PENDING, ELSEWHERE = "finished", "failed", "pending", "running elsewhere"
RUNNING = "running"  # status.json while a process runs the trial (its wall time so far).
DEFERRED = "deferred"  # A shared phase it needs runs elsewhere; not waited for.


# ---- what is on disk ----------------------------------------------------------------------

def phase_done(trial_dir: str, phase: str) -> bool:
    if phase == paths.EVALUATE_PHASE:
        return os.path.isfile(paths.run_file(trial_dir, phase, paths.EVALUATION_JSON))
    return os.path.isfile(paths.run_file(trial_dir, phase, paths.FINAL_WEIGHTS))


def read_status(trial_dir: str) -> dict | None:
    """status.json as a dict (with `_mtime`, its last heartbeat), or None when it is
    absent or not a JSON object."""
    path = os.path.join(trial_dir, STATUS_JSON)
    status = read_json_or_none(path)
    if not isinstance(status, dict):
        return None
    try:
        status["_mtime"] = os.stat(path).st_mtime
    except OSError:
        pass
    return status


def state(trial_dir: str, phases) -> str:
    """finished, failed or pending (not started, unfinished, or new phases asked for)."""
    status = read_status(trial_dir)
    if status and status.get("status") == FAILED:
        return FAILED
    if all(phase_done(trial_dir, p) for p in phases):
        return FINISHED
    return PENDING


def read_log(path: str) -> list[dict]:
    """The rows of a log.csv as floats (missing or unparsable values: nan)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    out = []
    for row in rows:
        parsed = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value)
            except (TypeError, ValueError):
                parsed[key] = math.nan
        out.append(parsed)
    return out


def divergence(trial_dir: str, phase: str) -> str | None:
    """'diverged: ...' when the phase stopped on a non-finite loss, as its own
    `summary.json` records (stop_reason "nan", no final weights). A phase with its
    final weights finished (they are never saved non-finite), whatever its log.csv
    says: a damaged log is not a divergence."""
    if phase_done(trial_dir, phase):
        return None
    summary = read_json_or_none(paths.run_file(trial_dir, phase, paths.SUMMARY_JSON))
    if not isinstance(summary, dict):
        return None
    files = summary.get("files")
    unsaved = isinstance(files, dict) and "final" in files and files["final"] is None
    if summary.get("stop_reason") != "nan" and not unsaved:
        return None
    epoch = summary.get("stopped_epoch") or summary.get("epochs_run")
    where = (f"epoch {epoch} of the {phase} phase"
             if isinstance(epoch, int) and not isinstance(epoch, bool) else f"the {phase} phase")
    return (f"diverged: a non-finite loss or weight in {where} (final weights not saved); "
            "lower the learning rate")


def configs_from_trial_json(trial_dir: str) -> tuple[list[str], dict]:
    content = read_json_or_none(os.path.join(trial_dir, TRIAL_JSON))
    if not content:
        raise RunError(f"{trial_dir} has no readable {TRIAL_JSON}; run sweep.py without "
                       "--run_trial")
    try:
        phases = [p for p in content["phases"] if isinstance(p, str)]
        return phases, {p: Config.from_dict(content["configs"][p]) for p in phases}
    except (KeyError, TypeError, AttributeError, ValueError, TapefitError) as e:
        raise RunError(f"{os.path.join(trial_dir, TRIAL_JSON)} is damaged ({type(e).__name__}); "
                       "delete it and run sweep.py again (it is rewritten)") from None


def identity_problems(trial_dir: str, phases) -> list[str]:
    """Why a phase the trial reaches is not the run its trial.json names (flags/identity.py:
    other flags, data, seed or parent; a damaged identity.json), one entry per phase. A
    trial.json without identities (an older tapefit) is not checked."""
    from tapefit.flags import identity as identity_lib
    content = read_json_or_none(os.path.join(trial_dir, TRIAL_JSON))
    expected = content.get("identity") if isinstance(content, dict) else None
    if not isinstance(expected, dict):
        return []
    problems = []
    for phase in phases:
        folder = os.path.join(trial_dir, phase)
        if os.path.isdir(folder):
            problem = identity_lib.problem(folder, expected.get(phase))
            if problem:
                problems.append(problem)
    return problems
