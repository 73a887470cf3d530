"""Folder snapshots for the hooks that write files: names, rewrites, contents."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile

import h5py
import numpy as np


def h5_digest(source):
    """All datasets of an HDF5 file (path or file object) as comparable bytes."""
    out = []
    with h5py.File(source, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                value = np.asarray(obj[()])
                out.append((name, value.dtype.str, value.shape, value.tobytes()))
        f.visititems(visit)
    return tuple(out)


def file_digest(path):
    """What a checkpoint holds: datasets for weights/.keras/.h5 files, else bytes."""
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as z:
            return ("keras", h5_digest(io.BytesIO(z.read("model.weights.h5"))))
    if path.endswith(".h5"):
        return ("h5", h5_digest(path))
    with open(path, "rb") as f:
        return ("bytes", f.read())


class FolderWatcher:
    """Describes a folder after each event: every file, whether it was (re)written
    since the previous look, and the contents of the (re)written ones.

    After each look every file's mtime is set to 1 ns, so a rewrite is seen
    even within the file system's timestamp granularity.
    """

    def __init__(self, root, digest=file_digest):
        self.root = root
        self.digest = digest
        self._signatures = {}

    def __call__(self, *unused):
        state = []
        signatures = {}
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(folder, name)
                st = os.stat(path)
                signature = (st.st_ino, st.st_mtime_ns, st.st_size)
                rel = os.path.relpath(path, self.root)
                if self._signatures.get(rel) != signature:
                    state.append((rel, "written", self.digest(path)))
                else:
                    state.append((rel, "unchanged"))
                os.utime(path, ns=(1, 1))
                signatures[rel] = (st.st_ino, 1, st.st_size)
        self._signatures = signatures
        return tuple(sorted(state))


class TempDirs:
    """A fresh pair of folders per case under one module folder."""

    def __init__(self, base):
        self.base = base

    def __enter__(self):
        self.dirs = (tempfile.mkdtemp(dir=self.base), tempfile.mkdtemp(dir=self.base))
        return self.dirs

    def __exit__(self, *exc):
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
