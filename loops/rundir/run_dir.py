"""The run-directory policy: what a phase may do with `<workdir>/<phase>/`.

`inspect()` reads the directory and decides, without writing anything:
- `new`: nothing there yet;
- `resume`: an unfinished run of the same flags and data with a backup: continue it;
- `restart`: an unfinished run of the same flags and data killed before its first
  backup: start it again (there is no training progress to keep);
- `overwrite`: `--overwrite` over whatever is there.
Everything else is a one-line error: a finished phase, another run's flags, data that
changed since the run started, a corrupt backup, a directory that is not writable, or
a directory another process is running in (`loops.rundir.run_lock`).

`prepare()` then applies the decision; it runs under the directory's lock.
Deleting never follows a link: a phase directory that is a symbolic link is never
deleted (an `overwrite` or `restart` of one is a one-line error), and the temporary
files a kill left behind are looked for without entering linked folders.
Workers of a multi-worker job other than the chief write into a temporary directory
(`worker_run_dir`) holding a copy of the chief's backup.
"""
from __future__ import annotations

import atexit
import dataclasses
import fnmatch
import json
import os
import shutil
import tempfile
import zlib

from tapefit.flags.config import PATH, RESUMABLE, Config, fields_with
from tapefit.flags.errors import ConfigError
from tapefit.layout.atomic import TEMP_PATTERN, check_writes, read_json
from tapefit.layout.paths import (  # noqa: F401  (re-exported: the names callers know from here)
    BACKUP_DIR,
    BEST_WEIGHTS,
    CLASSES_JSON,
    CONFIG_JSON,
    DATA_JSON,
    FINAL_WEIGHTS,
    SKIPPED_FILES,
    lock_path,
)
from tapefit.loops.training.checkpointer import BackupError, Position, backup_position

# Flags that may change between a run and its resumption.
RESUMABLE_CHANGES = fields_with(RESUMABLE)
# Flags holding paths: compared as real paths (a moved or re-spelled --workdir resumes).
PATH_FIELDS = fields_with(PATH)


@dataclasses.dataclass(frozen=True)
class RunDirState:
    mode: str  # new | resume | restart | overwrite
    position: Position | None = None


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_writable(path: str, flag: str = "--workdir") -> None:
    """`path` exists and is a writable folder, or could be created: else one line."""
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise ConfigError(f"cannot create {flag}={path}: {existing} is not a folder; pass "
                          f"a writable {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == os.path.abspath(path) else \
            f"cannot be created ({existing} is not writable)"
        raise ConfigError(f"{flag}={path} {what}; pass a writable {flag}")
    if _read_only_file_system(existing):  # os.access says yes to root even there.
        raise ConfigError(f"{flag}={path} is on a read-only file system ({existing}); "
                          f"pass a writable {flag}")
    if _no_storage(existing):  # /proc, /sys: os.access says yes, mkdir fails.
        raise ConfigError(f"{flag}={path} is on a pseudo file system without storage "
                          f"({existing}); pass a writable {flag}")


def _no_storage(path: str) -> bool:
    """A pseudo file system (proc, sysfs, devpts): no blocks at all."""
    try:
        return os.statvfs(path).f_blocks == 0
    except (OSError, AttributeError):
        return False


def _read_only_file_system(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # No statvfs (Windows): os.access decided.
        return False


def check_cache_dirs(cfg: Config) -> None:
    """`--feature_cache_dir` and `--image_cache_dir`, when given and their cache is on,
    can be created and written (checked before anything is written, as --workdir)."""
    if cfg.feature_cache_dir and cfg.feature_cache != "off":
        check_writable(cfg.feature_cache_dir, "--feature_cache_dir")
    if cfg.image_cache_dir and cfg.image_cache != "off":
        check_writable(cfg.image_cache_dir, "--image_cache_dir")


def _normalised(field: str, value):
    if field in PATH_FIELDS and isinstance(value, str) and value not in ("imagenet", "none"):
        return os.path.realpath(value)
    return value


def config_differences(cfg: Config, saved: dict) -> list[str]:
    """The flags that differ from a saved config.json; a flag the saved file does not
    have (written by an older tapefit) counts as its default."""
    defaults = Config().to_dict()
    return [f"--{k}={getattr(cfg, k)} (was {saved.get(k, defaults[k])})" for k in defaults
            if k not in RESUMABLE_CHANGES
            and _normalised(k, saved.get(k, defaults[k])) != _normalised(k, getattr(cfg, k))]


def _check_backup(backup_dir: str) -> Position | None:
    """The position of a readable backup, None without one; one line when corrupt."""
    try:
        return backup_position(backup_dir)
    except BackupError as e:
        raise ConfigError(f"the backup in {backup_dir} is corrupt ({str(e)[:100]}); pass "
                          "--overwrite to start the phase over") from None


def _meaningful_files(run_dir: str) -> list[str]:
    return [n for n in os.listdir(run_dir) if not n.startswith(".")]


def inspect(cfg: Config, run_dir: str, data_fingerprint: str, writer: bool = True
            ) -> RunDirState:
    """Decides what to do with `run_dir` (see the module docstring); writes nothing."""
    if os.path.islink(run_dir) and not os.path.exists(run_dir):
        raise ConfigError(f"{run_dir} is a symbolic link to {os.readlink(run_dir)}, which does "
                          "not exist; remove the link or create its folder")
    state = _inspect(cfg, run_dir, data_fingerprint, writer)
    if state.mode in ("overwrite", "restart") and os.path.islink(run_dir):
        raise ConfigError(
            f"{run_dir} is a symbolic link (to {os.path.realpath(run_dir)}) and "
            f"{'--overwrite' if state.mode == 'overwrite' else 'starting the phase over'} "
            "would delete it; tapefit never deletes through a link: remove the link or "
            "empty its folder yourself, or pass another --workdir")
    return state


def _inspect(cfg: Config, run_dir: str, data_fingerprint: str, writer: bool) -> RunDirState:
    if writer:
        check_writable(cfg.workdir)
        if os.path.isdir(run_dir):
            check_writable(run_dir, flag=f"the phase directory of --workdir={cfg.workdir}:")
    if not os.path.isdir(run_dir) or not _meaningful_files(run_dir):
        return RunDirState("new")
    if cfg.overwrite:
        return RunDirState("overwrite")
    if os.path.exists(os.path.join(run_dir, FINAL_WEIGHTS)):
        raise ConfigError(
            f"phase '{cfg.phase}' in {run_dir} is finished; pass --overwrite to train it "
            "again, or another --workdir")
    saved_path = os.path.join(run_dir, CONFIG_JSON)
    if not os.path.exists(saved_path):
        raise ConfigError(f"{run_dir} holds files but no {CONFIG_JSON}: not a tapefit run; "
                          "pass --overwrite to replace it, or another --workdir")
    try:
        saved = read_json(saved_path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{saved_path} is unreadable ({e}); pass --overwrite to start the "
                          "phase over") from None
    diffs = config_differences(cfg, saved)
    if diffs:
        raise ConfigError(
            f"cannot resume the unfinished run in {run_dir} with other flags: "
            f"{', '.join(diffs)}; pass the same flags to resume it, or --overwrite to start over")
    if not cfg.backup:
        raise ConfigError(
            f"{run_dir} holds an unfinished run; drop --nobackup to resume it or pass "
            "--overwrite to start over")
    data_path = os.path.join(run_dir, DATA_JSON)
    if os.path.exists(data_path):
        try:
            before = read_json(data_path).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            before = None
        if before != data_fingerprint:
            raise ConfigError(
                f"the data of the unfinished run in {run_dir} changed since it started "
                "(files added, removed or modified); restore the data, or pass --overwrite "
                "to start over")
    position = _check_backup(os.path.join(run_dir, BACKUP_DIR))
    return RunDirState("resume", position) if position else RunDirState("restart")


def remove_partial_files(run_dir: str) -> list[str]:
    """Deletes temporary files a kill left behind mid-save (layout.atomic.temp_path):
    `.*.tmp-*` names in `run_dir` and its real subfolders. Never enters a linked folder;
    a link with such a name is removed itself, never its target."""
    partial = []
    for folder, dirs, files in os.walk(run_dir, followlinks=False):
        # os.walk lists a link to a folder among `dirs` (not entered): it may be a temp.
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            if fnmatch.fnmatchcase(name, TEMP_PATTERN):
                path = os.path.join(folder, name)
                if os.path.islink(path) or os.path.isfile(path):
                    partial.append(path)
    for path in partial:
        os.remove(path)  # On a link: the link itself.
    return partial


def prepare(run_dir: str, state: RunDirState) -> None:
    """Applies `inspect()`'s decision (under the directory's lock)."""
    check_writes()  # This process still holds the lock (loops.rundir.run_lock).
    if state.mode in ("overwrite", "restart") and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    remove_partial_files(run_dir)


def worker_run_dir(cfg: Config, run_dir: str, task_name: str) -> str:
    """A non-chief worker's run directory: a temporary one, deleted at the end,
    holding a copy of the chief's backup (`run_dir` must be on a shared file system
    for that), so every worker resumes from the same state."""
    folder = tempfile.mkdtemp(prefix=f"tapefit-{task_name}-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    backup_dir = os.path.join(run_dir, BACKUP_DIR)
    if cfg.backup and not cfg.overwrite and os.path.isdir(backup_dir):
        shutil.copytree(backup_dir, os.path.join(folder, BACKUP_DIR),
                        ignore=shutil.ignore_patterns(".*"))  # Not files being written.
    return folder


def backup_token(cfg: Config, run_dir: str) -> int:
    """A number that workers resuming from the same backup agree on (0: none)."""
    backup_dir = os.path.join(run_dir, BACKUP_DIR)
    if not cfg.backup or cfg.overwrite or not os.path.isdir(backup_dir):
        return 0
    names = sorted(name for name in os.listdir(backup_dir) if not name.startswith("."))
    listing = [(name, os.path.getsize(os.path.join(backup_dir, name))) for name in names]
    return zlib.crc32(json.dumps(listing).encode()) if names else 0


def check_not_running(run_dir: str) -> None:
    """One line when another live process holds `run_dir`'s lock. `acquire()` decides
    whether a holder is alive (a stale lock is taken over), so try it and let go."""
    from tapefit.loops.rundir.run_lock import RunLock
    if os.path.lexists(lock_path(run_dir)):  # Also a FIFO or folder there: one line.
        RunLock(lock_path(run_dir), what="run directory", subject=run_dir).acquire().release()
