"""Helpers of bench/race.py and bench/phase_sharing.py: run sweep.py as a user does
(a subprocess, timed from outside) and read its study folder."""
from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def data_flags(args) -> list[str]:
    """The base flags of the bench's studies: real photos and weights, or synthetic."""
    flags = [f"--backbone={args.backbone}", f"--alpha={args.alpha}",
             f"--image_size={args.image_size}", f"--batch_size={args.batch_size}",
             "--notensorboard", "--noprogress"]
    if args.synthetic:
        return flags + ["--dataset=synthetic", f"--synthetic_examples={args.synthetic}",
                        "--weights=none"]
    return flags + [f"--data_dir={os.path.abspath(args.data_dir)}",
                    f"--weights={os.path.abspath(args.weights)}",
                    f"--max_examples_per_split={args.examples}"]


def run_sweep(argv: list[str], timeout: float | None = None) -> float:
    """Runs `python sweep.py ARGV`; its wall seconds (exits on failure)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"bench: sweep.py {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    print(proc.stdout.strip().splitlines()[-1], file=sys.stderr)
    return seconds


def phase_runs(study_dir: str, phase: str) -> int:
    """How many runs of `phase` the study trained (distinct run folders with final weights)."""
    trials = os.path.join(study_dir, "trials")
    found = set()
    for name in os.listdir(trials):
        folder = os.path.join(trials, name, phase)
        if os.path.isfile(os.path.join(folder, "final.weights.h5")):
            found.add(os.path.realpath(folder))
    return len(found)
