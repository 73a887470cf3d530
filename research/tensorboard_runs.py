"""`<study>/tensorboard/`: a study's TensorBoard runs, each distinct run once.

TensorBoard finds runs by walking its log directory, and both of its loaders follow
symbolic links (the Python one through `tf.io.gfile.walk`, which lists a link to a folder
as a folder; the Rust data server, `--load_fast`, through `WalkDir::follow_links(true)`).
A run is a folder that holds event files, named by its path below the log directory with
the links left unresolved. A study's trials link their shared phases
(`trials/<id>/<phase>` -> `shared/<phase>-s<seed>-<key>/<phase>`) and a shared phase's
folder links the earlier phases in, so `--logdir=<study>` lists a shared head once per
trial and per later shared phase that reach it, plus its own folder: 85 runs for 2
configurations x 3 seeds of head,finetune,evaluate, where 25 are distinct.

This folder holds links only (rewritten as trials finish), one per distinct run, a phase
run being told apart by the real path of its `tensorboard/` folder:

    hparams -> ../hparams                    the HParams experiment (the axes, the metrics)
    <trial id>/events.out.tfevents.*         links to the trial's HParams session
                                             (trials/<id>/hparams/): the session is named
                                             by the trial id, its metrics are in it
    <trial id>/<phase> -> ...<phase>/tensorboard     a phase run only this trial uses
    shared/<phase>-s<seed>-<key> -> ...              a phase run several trials use

so `tensorboard --logdir=<study>/tensorboard` lists `shared/head-s0-<key>/train`,
`<trial id>/finetune/validation`, ... once each. The HParams plugin reads a session's
metric (group "", tag T) from the session's own run (`metrics.run_tag_from_session_and_metric`),
and the trial's summary writes its metrics there, so every trial keeps its metrics.

The phases of the grid's trials that have not run yet are linked ahead, where they will
be (a trial's phase is shared unless its trial.json says sharing is off): a link to a
folder that does not exist yet is skipped by both loaders, and a running TensorBoard
picks the run up once it writes. What is on disk wins over that plan. Rebuild the folder
of a study from what is on disk: `python -m tapefit.research.tensorboard_runs <study>`.
"""
from __future__ import annotations

import logging
import os
import sys

from tapefit.layout import atomic, paths
from tapefit.research.trial_files import phase_done

INDEX_DIR = paths.TENSORBOARD_DIR  # <study>/tensorboard/ (a run's is <phase>/tensorboard/).
SHARED_ENTRY = paths.SHARED_DIR  # <study>/tensorboard/shared/<shared work directory name>
EXPERIMENT_ENTRY = paths.HPARAMS_DIR  # <study>/tensorboard/hparams -> ../hparams
PLAN_PREFIX = ".plan-"  # <study>/tensorboard/.plan-<signature>.json: the grid's shared names.

log = logging.getLogger(__name__)


def index_dir(study_dir: str) -> str:
    return os.path.join(study_dir, INDEX_DIR)


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except OSError:
        return []


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _event_files(folder: str) -> list[str]:
    return [n for n in _listdir(folder) if n.startswith(paths.EVENTS_PREFIX)
            and os.path.isfile(os.path.join(folder, n))]


def _trial_phases(study_dir: str, study) -> dict:
    """{trial id: ({phase: planned shared work directory or None}, in the grid)}: the
    grid's trials and every trial folder on disk."""
    from tapefit.layout.atomic import read_json_or_none

    trials = {}
    for trial_id, planned in (_plan(study_dir, study) if study is not None else {}).items():
        content = read_json_or_none(os.path.join(paths.trial_dir(study_dir, trial_id),
                                                 paths.TRIAL_JSON))
        sharing = not (isinstance(content, dict) and content.get("shared") == {})
        trials[trial_id] = ({p: paths.shared_dir(study_dir, name) if sharing else None
                             for p, name in planned.items()}, True)
    root = os.path.join(study_dir, paths.TRIALS_DIR)
    for name in _listdir(root):
        folder = os.path.join(root, name)
        if name in trials or not os.path.isdir(folder):
            continue
        content = read_json_or_none(os.path.join(folder, paths.TRIAL_JSON))
        phases = content.get("phases") if isinstance(content, dict) else None
        if not isinstance(phases, list):
            phases = [p for p in _listdir(folder)
                      if os.path.isdir(os.path.join(folder, p, paths.TENSORBOARD_DIR))]
        trials[name] = ({p: None for p in phases if isinstance(p, str) and p
                         and os.sep not in p and not p.startswith(".")}, False)
    return trials


_PLANS: dict = {}  # (study folder, study signature): the plan, in this process.


def _plan(study_dir: str, study) -> dict:
    """{trial id: {phase: the name of its shared work directory}} of the grid's trials.

    Computing the grid's shared keys costs ~20 ms a trial, so the plan is kept in this
    process and in <study>/tensorboard/.plan-<signature>.json (the signature: the study's
    sweep.json content); only a hint: what is on disk wins."""
    import hashlib
    import json

    from tapefit.research import grid

    text = json.dumps(study.to_dict(), sort_keys=True, default=str)
    signature = hashlib.sha256(text.encode()).hexdigest()[:12]
    key = (os.path.realpath(study_dir), signature)
    if key in _PLANS:
        return _PLANS[key]
    root = index_dir(study_dir)
    path = os.path.join(root, f"{PLAN_PREFIX}{signature}.json")
    plan = atomic.read_json_or_none(path)
    if not (isinstance(plan, dict) and all(
            isinstance(v, dict) and all(isinstance(n, str) for n in v.values())
            for v in plan.values())):
        plan = {t.trial_id: {p: os.path.basename(t.shared_dir(p)) for p in t.phases}
                for t in grid.expand(study, study_dir)}
        try:
            os.makedirs(root, exist_ok=True)
            atomic.atomic_write_json(path, plan)
            for name in os.listdir(root):  # Earlier grids' plans.
                if name.startswith(PLAN_PREFIX) and name != os.path.basename(path):
                    os.remove(os.path.join(root, name))
        except OSError as e:
            log.warning("%s: %s", path, e)
    _PLANS[key] = plan
    return plan


def entries(study_dir: str, study=None) -> dict[str, str]:
    """{name inside <study>/tensorboard: the path its link points to}, one per distinct run.

    `study` (a grid.Study): its trials that have not run yet are linked ahead; None: only
    what is on disk."""
    study_dir = os.path.abspath(study_dir)
    real_study = os.path.realpath(study_dir)
    real_shared = os.path.realpath(os.path.join(study_dir, paths.SHARED_DIR))
    real_trials = os.path.realpath(os.path.join(study_dir, paths.TRIALS_DIR))

    def lexical(real: str) -> str:  # Under the study's own path: the links stay relative.
        if _inside(real, real_study):
            return os.path.normpath(os.path.join(study_dir, os.path.relpath(real, real_study)))
        return real

    users: dict[str, list] = {}  # The real path of a run's tensorboard/: [(trial, phase)]
    trials = _trial_phases(study_dir, study)
    out = {EXPERIMENT_ENTRY: os.path.join(study_dir, paths.HPARAMS_DIR)}
    for trial_id, (planned, in_grid) in trials.items():
        trial_dir = paths.trial_dir(study_dir, trial_id)
        for phase, shared in planned.items():
            here = paths.phase_dir(trial_dir, phase)
            if os.path.lexists(here):
                run_dir = here  # What is on disk: the trial's own folder or its link.
            elif shared:
                run_dir = paths.phase_dir(shared, phase)
            elif in_grid:
                run_dir = here
            else:
                continue
            real = os.path.realpath(os.path.join(run_dir, paths.TENSORBOARD_DIR))
            if not os.path.isdir(real) and phase_done(trial_dir, phase):
                continue  # Finished without event files (--notensorboard): no run.
            users.setdefault(real, []).append((trial_id, phase))
        session = os.path.join(trial_dir, paths.HPARAMS_DIR)
        for name in _event_files(session):
            out[os.path.join(trial_id, name)] = os.path.join(session, name)
    # Shared phase runs no trial names (an earlier grid's): still runs of the study.
    for name in _listdir(real_shared):
        for phase in _listdir(os.path.join(real_shared, name)):
            run_dir = os.path.join(real_shared, name, phase)
            if not os.path.islink(run_dir) and os.path.isdir(
                    os.path.join(run_dir, paths.TENSORBOARD_DIR)):
                users.setdefault(os.path.realpath(
                    os.path.join(run_dir, paths.TENSORBOARD_DIR)), [])
    taken = set(out)
    for real in sorted(users):
        used_by = sorted(set(users[real]))
        parent = os.path.dirname(real)  # The phase's run directory.
        if len({t for t, _ in used_by}) == 1:
            name = os.path.join(*used_by[0])
        elif _inside(parent, real_shared) and parent != real_shared:
            rel = os.path.relpath(parent, real_shared)  # <shared name>/<phase>
            name = os.path.join(SHARED_ENTRY, os.path.dirname(rel) or rel)
        elif _inside(parent, real_trials) and parent != real_trials:
            name = os.path.relpath(parent, real_trials)  # <trial id>/<phase>
        else:
            name = os.path.join(*used_by[0])
        base, n = name, 1
        while name in taken:  # Two runs, one name (a folder reached in an odd way).
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        out[name] = lexical(real)
    return out


def write_index(study_dir: str, study=None) -> dict[str, str]:
    """Makes <study>/tensorboard/ hold exactly `entries(study_dir, study)` (links made,
    changed or removed; atomically each; other files left alone). Never raises OSError:
    a failed link is logged and the next rebuild makes it."""
    try:
        wanted = entries(study_dir, study)
        _sync(index_dir(study_dir), wanted)
        return wanted
    except OSError as e:
        log.warning("%s: %s", index_dir(study_dir), e)
        return {}


def link_session(trial_dir: str) -> None:
    """Adds the trial's HParams session to its study's tensorboard/ folder (the rest of
    the folder is rebuilt by write_index)."""
    trials_root = os.path.dirname(os.path.abspath(trial_dir))
    if os.path.basename(trials_root) != paths.TRIALS_DIR:
        return  # Not a study's trial.
    study_dir = os.path.dirname(trials_root)
    root = index_dir(study_dir)
    trial_id = os.path.basename(os.path.abspath(trial_dir))
    session = os.path.join(os.path.abspath(trial_dir), paths.HPARAMS_DIR)
    try:
        for name in _event_files(session):
            _link(root, os.path.join(trial_id, name), os.path.join(session, name))
    except OSError as e:
        log.warning("%s: %s", root, e)


def _existing(root: str) -> dict[str, str]:
    found = {}
    for folder, dirs, files in os.walk(root):  # Links to folders are listed, not entered.
        for name in dirs + files:
            path = os.path.join(folder, name)
            if not name.startswith(".") and os.path.islink(path):
                found[os.path.relpath(path, root)] = os.readlink(path)
    return found


def _target_text(root: str, name: str, target: str) -> str:
    link = os.path.join(root, name)
    study_dir = os.path.dirname(os.path.abspath(root))
    if _inside(os.path.abspath(target), study_dir):  # A moved study keeps its links.
        return os.path.relpath(os.path.abspath(target), os.path.dirname(os.path.abspath(link)))
    return target


def _link(root: str, name: str, target: str, existing: str | None = None) -> None:
    text = _target_text(root, name, target)
    link = os.path.join(root, name)
    if existing is None and os.path.islink(link):
        existing = os.readlink(link)
    if existing == text:
        return
    if os.path.lexists(link) and not os.path.islink(link):
        log.warning("%s is not a link: left alone", link)
        return
    os.makedirs(os.path.dirname(link), exist_ok=True)
    tmp = atomic.temp_path(link)
    os.symlink(text, tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        os.remove(tmp)
        raise


def _sync(root: str, wanted: dict[str, str]) -> None:
    os.makedirs(root, exist_ok=True)
    existing = _existing(root)
    for name, target in wanted.items():
        try:
            _link(root, name, target, existing.get(name))
        except OSError as e:  # Another process rebuilding at once: the next rebuild.
            log.warning("%s: %s", os.path.join(root, name), e)
    for name in existing:
        if name not in wanted:
            try:
                os.remove(os.path.join(root, name))
            except OSError:
                pass
    for folder, _, _ in os.walk(root, topdown=False):  # Folders left empty.
        if folder != root and not _listdir(folder):
            try:
                os.rmdir(folder)
            except OSError:
                pass


def main(argv=None) -> int:
    """Rebuilds a study's folder from what is on disk (a study whose trials all finished
    before this folder existed)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isdir(os.path.join(argv[0], paths.TRIALS_DIR)):
        print("usage: python -m tapefit.research.tensorboard_runs <study folder>",
              file=sys.stderr)
        return 2
    wanted = write_index(argv[0])
    print(f"{index_dir(argv[0])}: {len(wanted)} links; "
          f"tensorboard --logdir={index_dir(argv[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
