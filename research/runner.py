"""Running a study's trials: in this process (one after the other), or as N worker
processes (`--parallel=N`), each trial under a per-trial lock.

A trial is the phases of one configuration and seed, run as an ordinary tapefit
run directory `<study>/trials/<id>/`. What is on disk decides what runs:
- a phase with `final.weights.h5` (evaluate: `evaluation.json`) is done and skipped;
- an unfinished phase is run again with the same flags, which resumes it from its
  backup (`--backup`, on by default) exactly where it stopped;
- `status.json` records the outcome: finished, or failed with a one-line reason
  (a `TapefitError`, a non-finite loss in `log.csv`: "diverged"); a failed trial is
  not retried unless asked (`retry_failed`).
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

from flags.config import Config
from flags.errors import RunError, TapefitError
from loops.run_lock import RunLock
from research.files import atomic_write_json

TRIAL_JSON = "trial.json"
STATUS_JSON = "status.json"
TRIAL_LOG = "trial.log"
LOCK_FILE = ".trial.lock"
LOCK_LEASE_S = 120.0
FINAL_WEIGHTS = "final.weights.h5"  # loops.hooks.FINAL_WEIGHTS (no TensorFlow import here)
EVALUATION_JSON = "evaluation.json"  # loops.train_lib.EVALUATION_JSON
# Exit code of a worker that found its trial locked by another process.
EXIT_LOCKED = 75

FINISHED, FAILED, PENDING, ELSEWHERE = "finished", "failed", "pending", "running elsewhere"

log = logging.getLogger(__name__)


# ---- what is on disk ----------------------------------------------------------------------

def phase_done(trial_dir: str, phase: str) -> bool:
    if phase == "evaluate":
        return os.path.isfile(os.path.join(trial_dir, "evaluate", EVALUATION_JSON))
    return os.path.isfile(os.path.join(trial_dir, phase, FINAL_WEIGHTS))


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_status(trial_dir: str) -> dict | None:
    return read_json(os.path.join(trial_dir, STATUS_JSON))


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
    """'diverged: ...' when the phase's log.csv has a non-finite training or validation loss."""
    for row in read_log(os.path.join(trial_dir, phase, "log.csv")):
        for key in ("loss", "val_loss"):
            if key in row and not math.isfinite(row[key]):
                return (f"diverged: non-finite {key} in epoch {int(row.get('epoch', 0)) + 1} "
                        f"of the {phase} phase; lower the learning rate")
    return None


def write_trial_json(trial_dir: str, content: dict) -> None:
    path = os.path.join(trial_dir, TRIAL_JSON)
    if read_json(path) != json.loads(json.dumps(content, default=str)):
        atomic_write_json(path, content)


def configs_from_trial_json(trial_dir: str) -> tuple[list[str], dict]:
    content = read_json(os.path.join(trial_dir, TRIAL_JSON))
    if not content:
        raise RunError(f"{trial_dir} has no readable {TRIAL_JSON}; run sweep.py without "
                       "--run_trial")
    return content["phases"], {p: Config.from_dict(c) for p, c in content["configs"].items()}


# ---- one trial, in this process -----------------------------------------------------------

@contextlib.contextmanager
def trial_logging(trial_dir: str):
    """Python logging of the trial's phases goes to <trial>/trial.log; only errors to stderr."""
    root = logging.getLogger()
    handler = logging.FileHandler(os.path.join(trial_dir, TRIAL_LOG))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    quieted = [(h, h.level) for h in root.handlers]
    for h, _ in quieted:
        h.setLevel(max(h.level, logging.ERROR))
    level = root.level
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)
        for h, lv in quieted:
            h.setLevel(lv)


def run_trial(trial_dir: str, phases, configs: dict, content: dict | None = None,
              debug: bool = False, on_finished=None) -> str:
    """Runs the trial's unfinished phases in this process; returns its outcome
    (finished, failed, or running elsewhere when another process holds its lock).

    `content`: the trial.json to write; `on_finished(trial_dir)` runs once it finished
    (e.g. HParams summaries), under the lock."""
    os.makedirs(trial_dir, exist_ok=True)
    lock = RunLock(os.path.join(trial_dir, LOCK_FILE), lease_s=LOCK_LEASE_S, what="sweep trial")
    try:
        lock.acquire()
    except RunError:
        return ELSEWHERE
    try:
        outcome = state(trial_dir, phases)  # Another process may have finished it meanwhile.
        if content is not None:
            write_trial_json(trial_dir, content)
        if outcome == PENDING:
            outcome = _run_phases(trial_dir, phases, configs, debug)
        if outcome == FINISHED and on_finished is not None:
            try:
                on_finished(trial_dir)
            except Exception as e:  # noqa: BLE001  (a summary must not stop the sweep)
                if debug:
                    raise
                log.warning("trial %s: writing its summaries failed: %s",
                            os.path.basename(trial_dir), e)
        return outcome
    finally:
        lock.release()


def _run_phases(trial_dir, phases, configs, debug) -> str:
    from loops import train_lib  # TensorFlow: only when something runs.

    status = read_status(trial_dir) or {}
    wall = dict(status.get("wall_s", {}))
    with trial_logging(trial_dir):
        for phase in phases:
            try:
                if not phase_done(trial_dir, phase):
                    log.info("trial %s: phase %s", os.path.basename(trial_dir), phase)
                    start = time.perf_counter()
                    try:
                        train_lib.run(configs[phase])
                    finally:
                        wall[phase] = wall.get(phase, 0.0) + time.perf_counter() - start
                        _clear_session()
                reason = divergence(trial_dir, phase) if phase != "evaluate" else None
                if reason:
                    raise RunError(reason)
            except TapefitError as e:
                if debug:
                    raise
                return _finish(trial_dir, FAILED, wall, phase=phase, reason=str(e))
            except Exception as e:  # noqa: BLE001  (any failure of one trial: record, go on)
                if debug:
                    raise
                logging.getLogger().exception("trial failed")
                first = (str(e).strip().splitlines() or [""])[0][:300]
                return _finish(trial_dir, FAILED, wall, phase=phase,
                               reason=f"{type(e).__name__}: {first} (traceback in {TRIAL_LOG})")
    return _finish(trial_dir, FINISHED, wall)


def _finish(trial_dir, outcome, wall, phase=None, reason=None) -> str:
    status = {"status": outcome, "wall_s": wall, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if reason:
        status.update(phase=phase, reason=reason)
        log.warning("trial %s failed in %s: %s", os.path.basename(trial_dir), phase, reason)
    atomic_write_json(os.path.join(trial_dir, STATUS_JSON), status)
    return outcome


def _clear_session():
    import keras
    keras.backend.clear_session()


def record_failure(trial_dir: str, reason: str) -> None:
    """For a worker process that died without writing its outcome."""
    status = read_status(trial_dir) or {}
    _finish(trial_dir, FAILED, status.get("wall_s", {}), phase=None, reason=reason)


def clear_failure(trial_dir: str) -> None:
    """Forgets a recorded failure (--retry_failed): the trial runs again, resuming its phases."""
    status = read_status(trial_dir)
    if status and status.get("status") == FAILED:
        os.remove(os.path.join(trial_dir, STATUS_JSON))


# ---- several trials as worker processes -----------------------------------------------------

def _die_with_parent():
    """preexec_fn: the worker gets SIGKILL when the sweep process dies (Linux)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001  (other systems: workers finish their trial)
        pass


def run_parallel(jobs, parallel: int, worker_command, on_done) -> None:
    """Runs `jobs` [trial_dir, ...] as at most `parallel` worker processes at once (the
    first one alone).

    `worker_command(trial_dir)` is the argv of a worker; its output goes to
    <trial>/trial.log. `on_done(trial_dir, outcome)` is called as each one ends."""
    queue = list(jobs)
    running = {}
    finished = 0
    try:
        while queue or running:
            # The first trial alone: it fills the feature caches that later trials share
            # (two processes must not fill one cache folder at once).
            while queue and len(running) < (parallel if finished else 1):
                trial_dir = queue.pop(0)
                os.makedirs(trial_dir, exist_ok=True)
                out = open(os.path.join(trial_dir, TRIAL_LOG), "ab")
                proc = subprocess.Popen(worker_command(trial_dir), stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
                running[proc] = (trial_dir, out)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                trial_dir, out = running.pop(proc)
                out.close()
                if proc.returncode == EXIT_LOCKED:
                    outcome = ELSEWHERE
                else:
                    outcome = (read_status(trial_dir) or {}).get("status")
                    if outcome not in (FINISHED, FAILED):
                        record_failure(trial_dir, f"the worker process exited with code "
                                                  f"{proc.returncode}; see {TRIAL_LOG}")
                        outcome = FAILED
                finished += 1
                on_done(trial_dir, outcome)
    finally:
        for proc, (_, out) in running.items():
            proc.kill()
            proc.wait()
            out.close()


def worker_argv(script: str, trial_dir: str, extra=()) -> list[str]:
    return [sys.executable, script, f"--run_trial={trial_dir}", *extra]
