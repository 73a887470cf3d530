"""Comparative research runs: configurations × seeds, resumable, with honest statistics.

    python sweep.py --workdir=runs/study --phases=head,finetune,evaluate \\
        --axis=learning_rate=1e-3,3e-3 --axis=unfreeze_from=block4_conv1,block5_conv1 \\
        --seeds=0,1,2,3,4 --baseline=learning_rate=1e-3,unfreeze_from=block5_conv1 \\
        [train.py flags: the base configuration of every trial]

Each trial (one configuration, one seed) is an ordinary tapefit run directory
`<workdir>/trials/<trial_id>/{head,finetune,evaluate}/`. Re-running skips finished
trials and resumes unfinished ones; `--shard=I/N` runs a slice; `--report_only`
aggregates. The report: `<workdir>/results.{csv,md,png}`; TensorBoard HParams under
`<workdir>` (see research/README_SECTION.md).

Axis names: a train.py flag (`learning_rate`) applies to every phase; `head.NAME`,
`finetune.NAME`, `evaluate.NAME` to that phase only; `A/B=x1/y1,x2/y2` pairs values.
Flags are read here only.
"""
import os
import sys

from flags.quiet import silence_native_logs

if __name__ == "__main__":
    silence_native_logs()  # Before anything imports TensorFlow.

from absl import app, flags  # noqa: E402

from flags.definitions import define_flags, define_help_flags  # noqa: E402
from loops.entry import run_command  # noqa: E402

define_flags()
flags.DEFINE_string("phases", None, "Phases of every trial, in order (default: "
                    "head,finetune,evaluate, or the sweep file's).")
flags.DEFINE_multi_string("axis", [], "NAME=V1,V2 (a train.py flag; head.NAME / finetune.NAME "
                          "/ evaluate.NAME: that phase only), or A/B=x1/y1,x2/y2 (paired "
                          "values). Repeat for a grid.")
flags.DEFINE_string("seeds", None, "Training seeds of every configuration (--seed of each "
                    "trial; default 0,1,2, or the sweep file's). The data split is --split_seed, "
                    "the same for every trial.")
flags.DEFINE_string("baseline", None, "The configuration the others are compared with, "
                    "NAME=V,NAME=V (default: the first value of every axis).")
flags.DEFINE_string("sweep_file", None, "A JSON study: {phases, axes: {NAME: [values]}, seeds, "
                    "baseline: {NAME: value}, flags: {train.py flag: value}}; command-line "
                    "values win.")
flags.DEFINE_string("shard", "0/1", "Run only trials k with k mod N == I (I/N; e.g. "
                    "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT).")
flags.DEFINE_integer("parallel", 1, "Trials at once: 1 runs them one after the other in this "
                     "process; N > 1 as N worker processes.")
flags.DEFINE_boolean("report_only", False, "Only rewrite <workdir>/results.{csv,md,png} from "
                     "what is on disk (with only --workdir: the study in <workdir>/sweep.json).")
flags.DEFINE_boolean("retry_failed", False, "Run trials recorded as failed again.")
flags.DEFINE_boolean("progress", True, "A progress bar over the trials (on stderr).")
flags.DEFINE_string("run_trial", None, "Internal: run the trial in this folder (a worker of "
                    "--parallel).")
SWEEP_FLAGS = ("phases", "axis", "seeds", "baseline", "sweep_file", "shard", "parallel",
               "report_only", "retry_failed", "progress")
define_help_flags({"sweep": SWEEP_FLAGS})
FLAGS = flags.FLAGS


def cli_flags() -> dict:
    """The train.py flags given on the command line (the base configuration)."""
    import dataclasses

    from flags.config import Config
    from flags.errors import ConfigError
    for name, use in (("phase", "--phases"), ("seed", "--seeds"), ("overwrite", None)):
        if FLAGS[name].present:
            fix = f"pass {use}" if use else "delete <workdir>/trials/<id> to run a trial again"
            raise ConfigError(f"sweep.py does not take --{name}; {fix}")
    return {f.name: FLAGS[f.name].value for f in dataclasses.fields(Config)
            if FLAGS[f.name].present and f.name != "workdir"}


def sweep(cfg):
    from flags.errors import ConfigError
    from research import study as study_lib

    if FLAGS.run_trial:  # A worker of --parallel: one trial, described by its trial.json.
        outcome = study_lib.run_one(FLAGS.run_trial, debug=FLAGS.debug)
        from research import runner
        return runner.EXIT_LOCKED if outcome == runner.ELSEWHERE else 0
    if not FLAGS["workdir"].present:
        raise ConfigError("pass --workdir=DIR: the study's folder (trials, report)")
    workdir = FLAGS.workdir
    if FLAGS.parallel < 1:
        raise ConfigError(f"--parallel={FLAGS.parallel} must be at least 1")
    shard = study_lib.grid.parse_shard(FLAGS.shard)
    defined = FLAGS.axis or FLAGS.sweep_file or any(
        FLAGS[n].present for n in ("phases", "seeds", "baseline"))
    if FLAGS.report_only and not defined and not cli_flags():
        study = study_lib.load(workdir)
    else:
        study = study_lib.make(workdir, cli_flags(), phases=FLAGS.phases, axes=FLAGS.axis,
                               seeds=FLAGS.seeds, baseline=FLAGS.baseline,
                               sweep_file=FLAGS.sweep_file)
    if FLAGS.report_only:
        os.makedirs(workdir, exist_ok=True)
        result = study_lib.report.write(study, workdir)
        print(result["markdown"])
        return 0
    from loops.run_dir import check_cache_dirs, check_writable
    check_writable(workdir)  # Before a trial folder is written.
    check_cache_dirs(study.base)
    extra = [f"--logical_cpus={FLAGS.logical_cpus}"] if FLAGS.logical_cpus else []
    extra += ["--debug"] if FLAGS.debug else []
    script = os.path.abspath(__file__)
    outcomes = study_lib.run(
        study, workdir, shard=shard, parallel=FLAGS.parallel, retry_failed=FLAGS.retry_failed,
        debug=FLAGS.debug, progress=FLAGS.progress,
        worker_command=lambda trial_dir: study_lib.runner.worker_argv(script, trial_dir, extra))
    counts = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    print(f"sweep {workdir} (shard {shard[0]}/{shard[1]}): "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; report in {os.path.join(workdir, study_lib.report.RESULTS_MD)}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    app.run(lambda argv: run_command(argv, sweep))
