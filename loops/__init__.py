"""The phases of the recipe and the parts they are made of.

Here: one way through a phase (phases.py: `run` -> train / evaluate / lr_find, each
plan -> lock -> prepare -> run -> finish), the library of a phase (train_lib.py: build,
checks, weights), the LR finder (lr_find.py), custom-vs-fit comparison (compare_lib.py),
evaluate's per-example predictions (predictions.py), the console (console.py) and what every
entry point does around its command (entry.py). Below, by role: training/ (the
GradientTape loop and its exact-resume checkpointer, one runner per loop, the hook list,
weight saving, tf.distribute), caches/ (the frozen-prefix feature cache), optim/
(optimizers and schedules), rundir/ (the run directory, its lock and the write guard).
"""
