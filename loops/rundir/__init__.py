"""The run directory and its lock: what a phase may do with `<workdir>/<phase>/`
(run_dir.py), one process per run directory (run_lock.py), the guard hook
before every hook that writes run files (write_guard.py). Imports nothing
here: the lock is imported without TensorFlow by its race tests."""
