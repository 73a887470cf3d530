"""One cleanup of left-over temporaries, one rule (layout/temporaries.py; issue 29 item 5),
in each of its five users' folders: a live writer's temporary is kept, a dead one's removed."""
import os
import subprocess
import time

import pytest

from tapefit.layout import temporaries

HOURS_AGO = time.time() - 2 * 3600


@pytest.fixture(scope="module")
def pids():
    """(a live pid of another process, a pid whose process has ended)."""
    live = subprocess.Popen(["sleep", "600"])
    ended = subprocess.Popen(["true"])
    ended.wait()
    yield live.pid, ended.pid
    live.kill()
    live.wait()


# Each user: (its temporary's name for a writer tag `<host>-<pid>` and a variant n = 0
# or 1, its cleanup of the folder).
def _image_cache(folder):
    from tapefit.input_pipeline import image_cache
    cache = image_cache.SplitCache(folder, "train")
    return (lambda writer, n=0: f".tmp-train-{writer}-abc12{n}"), cache._remove_dead_temporaries


def _feature_cache(folder):
    from tapefit.loops.caches import feature_cache
    path = os.path.join(folder, "train")
    suffixes = (feature_cache.FEATURES, feature_cache.LABELS)
    return (lambda writer, n=0: f"train.{writer}.tmp{suffixes[n]}",
            lambda: feature_cache._remove_dead_temporaries(path))


def _checkpointer(folder):
    from tapefit.loops.training.checkpointer import Checkpointer
    return (lambda writer, n=0: f".variables-000002.npz.tmp-{writer}-0123abc{n}",
            Checkpointer(folder).remove_stale_temporaries)


def _backup_and_restore(folder):
    from tapefit.callbacks.backup_and_restore import BackupAndRestore
    return (lambda writer, n=0: f".ckpt-000003.weights.h5.tmp-{writer}-0123abc{n}.weights.h5",
            BackupAndRestore(folder)._remove_stale_temporaries)


def _report(folder):
    from tapefit.research import report
    return (lambda writer, n=0: f".results.md.tmp-{writer}-0123abc{n}",
            lambda: report.remove_stale_temporaries(folder))


def _make(path, folder_like, mtime=None):
    if folder_like:
        os.makedirs(path)
        inner = os.path.join(path, "images_0.data-00000-of-00001")
        with open(inner, "wb") as f:
            f.write(b"partial")
        if mtime is not None:
            os.utime(inner, (mtime, mtime))
    else:
        with open(path, "wb") as f:
            f.write(b"half")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.mark.parametrize("user", [_image_cache, _feature_cache, _checkpointer,
                                  _backup_and_restore, _report])
def test_a_live_writers_temporary_is_kept_and_a_dead_ones_removed(tmp_path, pids, user):
    live, ended = pids
    host = temporaries.host_tag()
    assert host not in ("otherhost", "far_host")
    folder = str(tmp_path)
    name, clean = user(folder)
    cases = {  # name: (last change, kept?)
        name(f"{host}-{live}"): (None, True),  # Another live process of this host.
        name(f"{host}-{os.getpid()}"): (None, True),  # This process's own.
        name(f"{host}-{ended}"): (None, False),  # Its writer has ended.
        # A live pid whose process started long after the temporary last changed: the
        # pid was reused (a restarted container), the writer is gone.
        name(f"{host}-{live}", 1): (HOURS_AGO, False),
        name(f"otherhost-{ended}"): (None, True),  # Another host's: not seen from here...
        name(f"far_host-{ended}"): (HOURS_AGO, False),  # ...until unchanged for an hour.
    }
    for path_name, (mtime, _) in cases.items():
        _make(os.path.join(folder, path_name), user is _image_cache, mtime)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_text("keep")
    link = os.path.join(folder, name(f"{host}-{ended}", 1))
    os.symlink(outside, link)  # A link with a temporary's name: never removed, nor its target.
    other = os.path.join(folder, "notes.tmp-x")
    _make(other, False, HOURS_AGO)  # Not one of this user's names.
    clean()
    for path_name, (_, kept) in cases.items():
        assert os.path.lexists(os.path.join(folder, path_name)) == kept, path_name
    assert os.path.islink(link) and outside.read_text() == "keep"
    assert os.path.exists(other)
