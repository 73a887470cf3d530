"""Comparative research runs: configurations × seeds, resumable, with honest statistics.

    tapefit sweep --workdir=runs/study --phases=head,finetune,evaluate \\
        --axis=learning_rate=1e-3,3e-3 --axis=unfreeze_from=block4,block5 \\
        --seeds=0,1,2,3,4 --baseline=learning_rate=1e-3,unfreeze_from=block5 \\
        [tapefit train flags: the base configuration of every trial]

Each trial (one configuration, one seed) is an ordinary tapefit run directory
`<workdir>/trials/<trial_id>/{head,finetune,evaluate}/`. Re-running skips finished
trials and resumes unfinished ones; `--shard=I/N` runs a slice; `--report_only`
aggregates. The report: `<workdir>/results.{csv,md,png}`; TensorBoard HParams under
`<workdir>` (see docs/studies.md).

`--race`: seeds are added in rounds (`--min_seeds` first, then one per round up to
`--max_seeds`) and after each round every configuration significantly worse than the
best on the validation metric (paired, Holm-adjusted, `--race_alpha`) is dropped.
Trials with identical phases up to one (flags and seed) share that phase's run
(`--noshare_phases` runs each trial's own).

Axis names: a train.py flag (`learning_rate`) applies to every phase; `head.NAME`,
`finetune.NAME`, `evaluate.NAME` to that phase only; `A/B=x1/y1,x2/y2` pairs values.
"""
# Flags are read here only.
import sys

if __name__ == "__main__" and not __package__:  # `python sweep.py` in a checkout:
    import _checkout  # noqa: F401  (its own tapefit, installed, or one line)

from tapefit.flags.quiet import silence_native_logs

if __name__ == "__main__":
    silence_native_logs()  # Before anything imports TensorFlow.

from absl import flags  # noqa: E402

from tapefit.flags.definitions import define_flags, define_help_flags  # noqa: E402
from tapefit.loops.entry import app_run, run_command  # noqa: E402

define_flags()
_TRAIN_FLAGS = set(flags.FLAGS)
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
flags.DEFINE_multi_string("flips", [], "'CONFIGURATION vs BASELINE' (each NAME=V,... as "
                          "--baseline): a further pair of results.md's per-example flips "
                          "(photos one fixes and breaks against the other, flips-I-vs-J.png); "
                          "repeatable; kept in sweep.json.")
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
flags.DEFINE_boolean("race", False, "Race the configurations: seeds in rounds, the clearly "
                     "worse dropped after each round (see --min_seeds, --max_seeds, "
                     "--race_alpha).")
flags.DEFINE_integer("min_seeds", 3, "--race: seeds of the first round.")
flags.DEFINE_integer("max_seeds", None, "--race: at most this many seeds (the first of "
                     "--seeds; without --seeds: 0..max_seeds-1; default: every seed).")
flags.DEFINE_float("race_alpha", 0.05, "--race: the significance level of the paired, "
                   "Holm-adjusted comparison with the round's best (--alpha is MobileNet's "
                   "width).")
flags.DEFINE_boolean("share_phases", True, "Trials whose phases up to one are identical "
                     "(flags and seed) share that phase's run (a link in the trial folder).")
flags.DEFINE_enum("select_by", "val_accuracy", ["val_accuracy", "val_loss"], "The "
                  "validation metric that chooses the best configuration (and that a race "
                  "compares): the last trained phase's, at the epoch whose weights evaluate "
                  "scores. Test numbers are reported, never used to choose.")
flags.DEFINE_string("run_trial", None, "Internal: run the trial in this folder (a worker of "
                    "--parallel).")
# The flags defined above (--help's "sweep" heading, first), but the internal --run_trial.
SWEEP_FLAGS = tuple(name for name in flags.FLAGS
                    if name not in _TRAIN_FLAGS and name != "run_trial")
# train.py flags the sweep refuses (`cli_flags`; not in its --help) -> the sweep's own
# flag that does their job (None: none does).
REFUSED = {"phase": "--phases", "seed": "--seeds", "overwrite": None}
define_help_flags({"sweep": SWEEP_FLAGS}, omit=(*REFUSED, "run_trial"), doc=__doc__)
FLAGS = flags.FLAGS


def cli_flags() -> dict:
    """The train.py flags given on the command line (the base configuration)."""
    import dataclasses

    from tapefit.flags.config import Config
    from tapefit.flags.errors import ConfigError
    for name, use in REFUSED.items():
        if FLAGS[name].present:
            fix = f"pass {use}" if use else "delete <workdir>/trials/<id> to run a trial again"
            raise ConfigError(f"sweep.py does not take --{name}; {fix}")
    return {f.name: FLAGS[f.name].value for f in dataclasses.fields(Config)
            if FLAGS[f.name].present and f.name != "workdir"}


def check_sweep_numbers() -> None:
    """sweep.py's numeric flags (those with a range in flags/config.py `RANGES`) in
    their ranges (`check_number`): one line naming the fix, before anything is
    written. An unset --max_seeds is every seed."""
    from tapefit.flags.config import RANGES, check_number
    for name in SWEEP_FLAGS:
        if name in RANGES and FLAGS[name].value is not None:
            check_number(name, FLAGS[name].value, FLAGS[name].flag_type())


def sweep(cfg):
    from tapefit.flags.errors import ConfigError
    from tapefit.research import study as study_lib

    if FLAGS.run_trial:  # A worker of --parallel: one trial, described by its trial.json.
        outcome = study_lib.run_one(FLAGS.run_trial, debug=FLAGS.debug)
        from tapefit.research import runner
        return runner.EXIT_LOCKED if outcome == runner.ELSEWHERE else 0
    if not FLAGS["workdir"].present:
        raise ConfigError("pass --workdir=DIR: the study's folder (trials, report)")
    workdir = FLAGS.workdir
    from tapefit.research import options as options_lib
    check_sweep_numbers()
    options = options_lib.from_flags(FLAGS)  # The one place the study's flags are read.
    defined = FLAGS.axis or FLAGS.sweep_file or any(
        FLAGS[n].present for n in ("phases", "seeds", "baseline", "race", "min_seeds",
                                   "max_seeds", "race_alpha"))
    study, options = study_lib.prepare(
        workdir, cli_flags(), options, phases=FLAGS.phases, axes=FLAGS.axis,
        seeds=FLAGS.seeds, baseline=FLAGS.baseline, sweep_file=FLAGS.sweep_file,
        saved=FLAGS.report_only and not defined and not cli_flags())
    if options.report_only:
        print(study_lib.report_only(study, workdir, options)["markdown"])
        return 0
    outcomes = study_lib.execute(study, workdir, options)
    print(study_lib.outcome_line(study, workdir, options.shard, outcomes))
    sys.stdout.flush()
    return 0


def main(argv=None):
    """The `tapefit sweep` command (absl's `app.run`; `argv` defaults to `sys.argv`)."""
    app_run(lambda argv: run_command(argv, sweep), argv)


if __name__ == "__main__":
    main()
