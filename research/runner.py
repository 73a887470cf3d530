"""Running a study's trials: in this process (one after the other), or as N worker
processes (`--parallel=N`), each trial under a per-trial lock.

A trial is the phases of one configuration and seed, run as an ordinary tapefit
run directory `<study>/trials/<id>/`. What is on disk decides what runs:
- a phase with `final.weights.h5` (evaluate: `evaluation.json`) is done and skipped;
- an unfinished phase is run again with the same flags, which resumes it from its
  backup (`--backup`, on by default) exactly where it stopped;
- `status.json` records the outcome: finished, or failed with a one-line reason
  (a `TapefitError`; a phase that stopped on a non-finite loss, as its own
  `summary.json` says: "diverged"); a failed trial is not retried unless asked
  (`retry_failed`). A damaged `log.csv` of a finished phase does not fail it.

Shared phases: when the trial names a shared work directory for a phase
(`grid.Trial.shared_dir`), the phase runs there, under that directory's own lock
(`.phase.lock`), and the trial's `<phase>` folder is a relative link to it; a
second process that needs the same phase waits for it (or, asked not to wait,
defers the trial). Earlier phases are linked into the shared work directory, so it
is an ordinary run directory too (finetune finds the head's weights in it).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time

from tapefit.flags import identity as identity_lib
from tapefit.flags.errors import RunError, TapefitError
from tapefit.layout import paths
from tapefit.layout.atomic import atomic_write_json, read_json_or_none
from tapefit.loops.rundir.run_lock import LockHeld, LockLost, RunLock, check_held
from tapefit.research.trial_files import (  # noqa: F401  (the runner's vocabulary)
    DEFERRED,
    ELSEWHERE,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    configs_from_trial_json,
    divergence,
    phase_done,
    read_log,
    read_status,
    state,
)

# The names of a trial's files (layout.paths), short here: this module uses them everywhere.
TRIAL_JSON, STATUS_JSON, TRIAL_LOG = paths.TRIAL_JSON, paths.STATUS_JSON, paths.TRIAL_LOG
LOCK_FILE = paths.TRIAL_LOCK
PHASE_LOCK_FILE = paths.PHASE_LOCK  # In a shared phase's work directory.
LOCK_LEASE_S = 120.0
WAIT_POLL_S = 2.0  # How often a trial waiting for a shared phase looks again.
HEARTBEAT_S = 2.0  # How often a running trial's status.json is touched (its wall time).
# Exit code of a worker that found its trial locked by another process.
EXIT_LOCKED = 75

log = logging.getLogger(__name__)


def write_trial_json(trial_dir: str, content: dict) -> None:
    path = os.path.join(trial_dir, TRIAL_JSON)
    if read_json_or_none(path) != json.loads(json.dumps(content, default=str)):
        atomic_write_json(path, content, default=str)


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
              debug: bool = False, on_finished=None, shared: dict | None = None,
              wait: bool = True) -> str:
    """Runs the trial's unfinished phases in this process; returns its outcome
    (finished, failed, running elsewhere when another process holds its lock, or
    deferred when a shared phase runs elsewhere and `wait` is False).

    `content`: the trial.json to write; `on_finished(trial_dir)` runs once it finished
    (e.g. HParams summaries), under the lock; `shared`: {phase: shared work directory}
    for the phases it shares with other trials (see the module docstring)."""
    os.makedirs(trial_dir, exist_ok=True)
    lock = RunLock(os.path.join(trial_dir, LOCK_FILE), lease_s=LOCK_LEASE_S, what="sweep trial")
    try:
        lock.acquire()
    except LockHeld:  # Anything else in the lock's place (a folder, a FIFO): one line, raised.
        return ELSEWHERE
    try:
        outcome = state(trial_dir, phases)  # Another process may have finished it meanwhile.
        if content is not None:
            write_trial_json(trial_dir, content)
        if outcome == PENDING:
            expected = (content or {}).get("identity") if isinstance(content, dict) else None
            outcome = _run_phases(trial_dir, phases, configs, debug, shared or {}, wait,
                                  expected if isinstance(expected, dict) else {})
        if outcome == FINISHED and on_finished is not None:
            try:
                on_finished(trial_dir)
            except Exception as e:  # noqa: BLE001  (a summary must not stop the sweep)
                if debug:
                    raise
                log.warning("trial %s: writing its summaries failed: %s",
                            os.path.basename(trial_dir), e)
        return outcome
    except LockLost as e:  # Paused past the lease and taken over: the trial is theirs now.
        if debug:
            raise
        log.warning("trial %s: %s", os.path.basename(trial_dir), e)
        return ELSEWHERE
    finally:
        lock.release()


class _Deferred(Exception):
    """A shared phase this trial needs is being run by another process."""


def _run_phases(trial_dir, phases, configs, debug, shared, wait, expected) -> str:
    status = read_status(trial_dir) or {}
    wall = _recover_wall(status)
    shared_now = {}
    with trial_logging(trial_dir):
        for index, phase in enumerate(phases):
            try:
                where = _phase_workdir(trial_dir, phases, index, shared, shared_now)
                if not phase_done(trial_dir, phase):
                    if where != trial_dir:
                        _run_shared(trial_dir, phases[:index], phase, configs[phase], where,
                                    wall, wait)
                    else:
                        _run_timed(trial_dir, phase, configs[phase], wall)
                reason = divergence(trial_dir, phase) if phase != paths.EVALUATE_PHASE else None
                if reason:
                    raise RunError(reason)
                if not phase_done(trial_dir, phase):
                    raise RunError(f"the {phase} phase ended without its final files; see "
                                   f"{TRIAL_LOG} and {os.path.join(phase, paths.SUMMARY_JSON)}")
                _check_identity(trial_dir, phase, expected.get(phase))
            except _Deferred:
                _write_status(trial_dir, {"status": PENDING, "wall_s": wall})
                return DEFERRED
            except TapefitError as e:
                if debug:
                    raise
                return _finish(trial_dir, FAILED, wall, phase=phase, reason=str(e),
                               shared=shared_now)
            except Exception as e:  # noqa: BLE001  (any failure of one trial: record, go on)
                if debug:
                    raise
                logging.getLogger().exception("trial failed")
                first = (str(e).strip().splitlines() or [""])[0][:300]
                return _finish(trial_dir, FAILED, wall, phase=phase,
                               reason=f"{type(e).__name__}: {first} (traceback in {TRIAL_LOG})",
                               shared=shared_now)
    return _finish(trial_dir, FINISHED, wall, shared=shared_now)


def _check_identity(trial_dir: str, phase: str, expected) -> None:
    """The finished phase the trial reaches (its folder, or the link into shared/) is the
    run the trial names (flags/identity.py), or a one-line RunError naming the fix."""
    folder = os.path.join(trial_dir, phase)
    problem = identity_lib.problem(folder, expected)
    if problem:
        what = "the link" if os.path.islink(folder) else "the folder"
        raise RunError(f"damaged: {problem}; remove {what} {folder} and run the sweep again "
                       "(the phase runs again, or is linked to its own run)")


def _phase_workdir(trial_dir, phases, index, shared, shared_now) -> str:
    """Where the phase runs: its shared work directory (linked from the trial) when the
    trial shares it and every earlier phase is shared too (an earlier phase run in the
    trial's own folder, e.g. by a sweep without sharing, keeps the later ones there);
    else the trial's folder."""
    phase = phases[index]
    link = os.path.join(trial_dir, phase)
    if phase not in shared or (os.path.isdir(link) and not os.path.islink(link)):
        return trial_dir
    if any(p not in shared_now for p in phases[:index]):
        return trial_dir
    workdir = shared[phase]
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        raise RunError(f"{workdir} is not a folder (the shared {phase} run's work directory); "
                       "remove it and run the sweep again")
    _link(os.path.join(workdir, phase), link)
    shared_now[phase] = workdir
    return workdir


def _link(target: str, link: str) -> None:
    """`link` -> `target` as a relative symbolic link, atomically (replaces a link). The
    relative path is between the real folders: a `trials/` (or `shared/`) that is itself
    a link (scratch space elsewhere) still resolves."""
    relative = os.path.relpath(os.path.realpath(target),
                               os.path.realpath(os.path.dirname(link)))
    if os.path.islink(link) and os.readlink(link) == relative:
        return
    tmp = f"{link}.tmp-link-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(relative, tmp)
    os.replace(tmp, link)


def _run_shared(trial_dir, earlier, phase, cfg, workdir, wall, wait) -> None:
    """Runs `phase` in its shared work directory under that directory's lock; waits
    while another process runs it (or raises _Deferred when not `wait`). Another process
    may also run it through a trial's link (a --noshare_phases shard resuming it): it then
    holds the phase's run lock (the one of its real folder), and this process waits too."""
    os.makedirs(workdir, exist_ok=True)
    lock = RunLock(os.path.join(workdir, PHASE_LOCK_FILE), lease_s=LOCK_LEASE_S,
                   what="shared phase")
    announced = False
    while True:
        try:
            lock.acquire()
            try:
                if phase_done(trial_dir, phase):
                    return
                # The trial's earlier phases, linked in: the shared folder is a whole run.
                for name in earlier:
                    _link(os.path.realpath(os.path.join(trial_dir, name)),
                          os.path.join(workdir, name))
                _run_timed(trial_dir, phase, cfg.replace(workdir=workdir), wall)
                return
            finally:
                lock.release()
        except LockHeld as e:  # A lock that is not one is raised: the trial fails, one line.
            if phase_done(trial_dir, phase):
                return
            if not wait:
                raise _Deferred() from None
            if not announced:
                log.info("trial %s: waiting for the shared %s phase (%s)",
                         os.path.basename(trial_dir), phase, e)
                announced = True
            time.sleep(WAIT_POLL_S)


def _run_timed(trial_dir, phase, cfg, wall) -> None:
    """phases.run(cfg); its wall time is added to wall[phase], and while it runs
    status.json says so (touched every HEARTBEAT_S: a killed run's time is recovered
    from it when the trial resumes)."""
    from tapefit.loops import phases  # TensorFlow: only when something runs.

    log.info("trial %s: phase %s%s", os.path.basename(trial_dir), phase,
             "" if cfg.workdir == trial_dir else f" (shared: {cfg.workdir})")
    path = os.path.join(trial_dir, STATUS_JSON)
    since = time.time()
    _write_status(trial_dir, {"status": RUNNING, "phase": phase, "since": since,
                              "wall_s": wall})
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(path)
            except OSError:
                pass

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        phases.run(cfg)
    finally:
        stop.set()
        thread.join()
        wall[phase] = wall.get(phase, 0.0) + time.perf_counter() - start
        _write_status(trial_dir, {"status": PENDING, "wall_s": wall})
        _clear_session()


def _recover_wall(status: dict) -> dict:
    """The wall time per phase so far, plus the time a killed run spent in its phase
    (from its start to status.json's last heartbeat)."""
    wall = status.get("wall_s") if isinstance(status, dict) else None
    wall = {k: float(v) for k, v in (wall or {}).items()
            if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)} if isinstance(wall, dict) else {}
    if isinstance(status, dict) and status.get("status") == RUNNING:
        since, phase, beat = status.get("since"), status.get("phase"), status.get("_mtime")
        if isinstance(since, (int, float)) and isinstance(phase, str) and beat:
            wall[phase] = wall.get(phase, 0.0) + max(0.0, beat - since)
    return wall


def _write_status(trial_dir: str, status: dict) -> None:
    check_held()  # A process that lost the trial's lock writes nothing more (LockLost).
    atomic_write_json(os.path.join(trial_dir, STATUS_JSON),
                      {**status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, default=str)


def _finish(trial_dir, outcome, wall, phase=None, reason=None, shared=None) -> str:
    status = {"status": outcome, "wall_s": wall}
    if shared:
        status["shared"] = {p: os.path.relpath(d, trial_dir) for p, d in shared.items()}
    if reason:
        status.update(phase=phase, reason=reason)
        log.warning("trial %s failed in %s: %s", os.path.basename(trial_dir), phase, reason)
    _write_status(trial_dir, status)
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
