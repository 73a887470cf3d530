"""Where tapefit keeps its files: the ground floor under `loops/`, `callbacks/` and
`research/`, importing nothing of TensorFlow, Keras or the rest of tapefit.

- `layout.paths`: every file and folder name of a run directory, a study and the
  caches, and the functions that join them (`phase_dir`, `lock_path`, `trial_dir`, ...);
- `layout.atomic`: the one atomic write (temporary file, then rename; the write checks
  of `loops.rundir.run_lock`) and the one JSON format tapefit writes and reads;
- `layout.temporaries`: which temporary files a killed writer left over (one rule,
  `pid_alive` included) and the one cleanup of them.

This `__init__` re-exports nothing: import `layout.paths`, `layout.atomic` or
`layout.temporaries`.
"""
